"""Helpers with no instrument logic, the lowest layer (every other layer may use them).

* :mod:`.cache`: attnlab's cache folder and files written once
* :mod:`.quiet`: scoped silencing of known-harmless library messages and progress bars
* :mod:`.provenance`: the model name a pipeline was loaded as
"""
