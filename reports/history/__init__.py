"""History across commits and machines: a store of results (store.py), change points in it
(changes.py) and a static site of both (site.py). Works from files alone, like every report."""
