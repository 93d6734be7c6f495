"""Bytes in and out: images.py (decode, encode, working size), storage.py (object storage), files.py
(atomic writes, temporaries), discover.py (inputs -> jobs), htmlpage.py (the report pages)."""
