"""Reading spreadsheets: ``table.read_table`` is the entry; ``sniff``, ``text``, ``workbook``, ``xlsx``,
``safety``, ``sheets`` and the capped child reader ``isolated`` each own one part of it.

Kept free of imports: the child process imports ``importer.read.isolated`` and must not load pandas.
"""
