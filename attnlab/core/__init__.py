"""The instrument: everything that observes and edits temporal attention, and nothing else.

Read in this order (see ``docs/architecture.md``):

* :mod:`~attnlab.core.dims` - the dimension names shared by tensors, stores and plots;
* :mod:`~attnlab.core.sites` - site tables (where temporal attention lives) and the family
  registry, the extension point for model families;
* :mod:`~attnlab.core.selection` - layer, step and CFG-half selections;
* :mod:`~attnlab.core.protocol` - the typed client protocol (stages, call context, plans);
* :mod:`~attnlab.core.processor` - the temporal attention processor and its hook points;
* :mod:`~attnlab.core.joint` - the frame-level map of full-3D (joint) attention;
* :mod:`~attnlab.core.patch` - reversible patches;
* :mod:`~attnlab.core.control` - the controller that installs and removes them;
* :mod:`~attnlab.core.recording`, :mod:`~attnlab.core.store` - recorders and the zarr store;
* :mod:`~attnlab.core.api` - ``record``, ``edit``, ``hooks``.

The core imports nothing else of attnlab; the edits (:mod:`attnlab.edits`) build on it.
"""
