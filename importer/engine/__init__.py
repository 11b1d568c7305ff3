"""Planning and applying writes: resolve, plan (pure), apply (the one write loop), journal."""
