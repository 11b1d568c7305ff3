"""Files the installed tool needs at run time, read with ``importlib.resources``.

``inventory.json`` is the sandbox's default account; ``carrier_routing.xlsx`` and
``carrier_routing.csv`` are the demo's sample sheets (written by ``sample_data/make_samples.py``,
which copies them into ``sample_data/`` too).
"""
