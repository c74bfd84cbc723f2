"""The instrument: everything that observes and edits temporal attention, and nothing else.

Read in this order (see ``docs/architecture.md``):

* :mod:`~attnlab.core.dims` - the dimension names shared by tensors, stores and plots;
* :mod:`~attnlab.core.sites` - site tables (where temporal attention lives) and the family
  registry, the extension point for model families;
* :mod:`~attnlab.core.joint_sites` - the site types of full-3D (joint) attention models;
* :mod:`~attnlab.core.selection` - layer, step and CFG-half selections;
* :mod:`~attnlab.core.protocol` - the typed client protocol (stages, call context, plans) and
  the host protocol the processors see;
* :mod:`~attnlab.core.blocking` - block sizes of the blocked paths, read on first use;
* :mod:`~attnlab.core.processor` - the temporal attention processor and its hook points;
* :mod:`~attnlab.core.joint_math`, :mod:`~attnlab.core.joint` - the frame-level map and edits
  of joint attention, and its processor;
* :mod:`~attnlab.core.patch` - reversible patches;
* :mod:`~attnlab.core.runs` - how denoiser calls are grouped into runs and steps;
* :mod:`~attnlab.core.control` - the controller that installs and removes the processors;
* :mod:`~attnlab.core.recording`, :mod:`~attnlab.core.store` - recorders and the zarr store;
* :mod:`~attnlab.core.api` - ``record``, ``edit``, ``hooks``.

The core imports nothing of attnlab but :mod:`attnlab.util`; the edits (:mod:`attnlab.edits`) build on it.
"""
