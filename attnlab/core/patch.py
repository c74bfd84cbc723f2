"""Reversible patches: every change attnlab makes to a model, pipeline or scheduler is one of
these objects. Each saves exactly what it replaces and restores exactly that (an instance
attribute that existed before comes back; one that did not is removed), so leaving a context
returns the objects to their prior state even when other code patched them too.

:func:`attnlab.is_instrumented` and :func:`attnlab.active_patches` read the patches that are in
place (the controller holds them; nothing is kept on the patched objects).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

_MISSING = object()


class Patch:
    """One reversible change; ``apply`` once, ``restore`` once."""

    #: what the patch changes, for :func:`attnlab.active_patches`
    description: str = ""

    def __init__(self, target: Any, description: str):
        self.target = target
        self.description = description
        self.applied = False

    def apply(self) -> Patch:
        if self.applied:
            raise RuntimeError(f"patch already applied: {self.description}")
        self._apply()
        self.applied = True
        return self

    def restore(self) -> None:
        if not self.applied:
            return
        self.applied = False
        self._restore()

    def _apply(self) -> None:
        raise NotImplementedError

    def _restore(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "active" if self.applied else "restored"
        return f"<{type(self).__name__} {state}: {self.description}>"


class AttributePatch(Patch):
    """Set ``obj.name = value`` on the instance; restore the instance attribute that was there
    before (or remove it when there was none, so the class attribute shows again)."""

    def __init__(self, obj: Any, name: str, value: Any, description: str | None = None):
        super().__init__(obj, description or f"{type(obj).__name__}.{name}")
        self.name = name
        self.value = value
        self.saved: Any = _MISSING

    def _apply(self) -> None:
        self.saved = vars(self.target).get(self.name, _MISSING)
        object.__setattr__(self.target, self.name, self.value)

    def _restore(self) -> None:
        current = vars(self.target).get(self.name, _MISSING)
        if current is not self.value:
            warnings.warn(
                f"attnlab: {self.description} was changed by other code while attnlab's patch "
                "was active; leaving the current value in place",
                stacklevel=3,
            )
            return
        if self.saved is _MISSING:
            delattr(self.target, self.name)
        else:
            object.__setattr__(self.target, self.name, self.saved)


class ClassPatch(Patch):
    """Give ``obj`` another class (a subclass that adds behaviour); restore the original."""

    def __init__(self, obj: Any, cls: type, description: str | None = None):
        super().__init__(obj, description or f"{type(obj).__name__} instance class")
        self.cls = cls
        self.saved: type | None = None

    def _apply(self) -> None:
        self.saved = type(self.target)
        self.target.__class__ = self.cls

    def _restore(self) -> None:
        if type(self.target) is not self.cls:
            warnings.warn(
                f"attnlab: the class of {self.description} was changed by other code; "
                "leaving it in place",
                stacklevel=3,
            )
            return
        assert self.saved is not None
        self.target.__class__ = self.saved


class ProcessorPatch(Patch):
    """``attn.set_processor(processor)``; restore the processor object that was set before."""

    def __init__(self, attn: Any, processor: Any, description: str):
        super().__init__(attn, description)
        self.processor = processor
        self.saved: Any = None

    def _apply(self) -> None:
        self.saved = self.target.processor
        self._set(self.processor)

    def _restore(self) -> None:
        self._set(self.saved)

    def _set(self, processor: Any) -> None:
        # Mochi's ``MochiAttention`` has no ``set_processor``; it reads ``.processor``
        if hasattr(self.target, "set_processor"):
            self.target.set_processor(processor)
        else:
            self.target.processor = processor


class ChildModulePatch(Patch):
    """Add a child module ``parent.<name>`` that did not exist; remove it again."""

    def __init__(self, parent: Any, name: str, module: Any, description: str):
        super().__init__(parent, description)
        self.name = name
        self.module = module

    def _apply(self) -> None:
        if hasattr(self.target, self.name):
            raise RuntimeError(f"{self.description}: the attribute already exists")
        self.target.add_module(self.name, self.module)

    def _restore(self) -> None:
        if getattr(self.target, self.name, None) is self.module:
            delattr(self.target, self.name)  # nn.Module.__delattr__ removes the child


class CallbackPatch(Patch):
    """A change made by an API that returns its own undo (e.g. a torch hook handle)."""

    def __init__(self, target: Any, do: Callable[[], Callable[[], None]], description: str):
        super().__init__(target, description)
        self.do = do
        self.undo: Callable[[], None] | None = None

    def _apply(self) -> None:
        self.undo = self.do()

    def _restore(self) -> None:
        assert self.undo is not None
        self.undo()


class InnerForwardPatch(Patch):
    """Wrap the innermost forward of a module's diffusers hook chain: the module's own
    ``forward`` as diffusers' ``HookRegistry`` calls it after every hook of the module has
    acted (a hook's ``new_forward`` may change the arguments or not call it at all).
    ``wrap(original)`` returns the wrapper. Restored wherever the chain then holds the wrapper
    (a hook removed meanwhile hands its reference on to the next hook or to the module)."""

    def __init__(self, module: Any, wrap: Callable[[Any], Any], description: str):
        super().__init__(module, description)
        self.wrap = wrap
        self.original: Any = None
        self.wrapper: Any = None

    def _apply(self) -> None:
        ref = self.target._diffusers_hook._fn_refs[0]  # the first hook wraps the own forward
        attr = "original_forward" if ref.original_forward is not None else "forward"
        self.original = getattr(ref, attr)
        self.wrapper = self.wrap(self.original)
        setattr(ref, attr, self.wrapper)

    def _restore(self) -> None:
        registry = getattr(self.target, "_diffusers_hook", None)
        for ref in getattr(registry, "_fn_refs", ()):
            for attr in ("forward", "original_forward"):
                if getattr(ref, attr) is self.wrapper:
                    setattr(ref, attr, self.original)
        if vars(self.target).get("forward") is self.wrapper:  # every hook was removed
            object.__setattr__(self.target, "forward", self.original)


class Patches:
    """The patches one controller holds, restored in reverse order of application."""

    def __init__(self) -> None:
        self.active: list[Patch] = []

    def apply(self, patch: Patch) -> Patch:
        patch.apply()
        self.active.append(patch)
        return patch

    def restore_all(self) -> list[Exception]:
        """Restore every patch (last first); returns the errors, after trying them all."""
        errors: list[Exception] = []
        while self.active:
            patch = self.active.pop()
            try:
                patch.restore()
            except Exception as err:
                errors.append(err)
        return errors

    def __len__(self) -> int:
        return len(self.active)

    def __iter__(self):
        return iter(list(self.active))


class SkipRegistryPatch(Patch):
    """Register ``cls`` (an attnlab processor class) in diffusers' layer-skip registry
    (``diffusers.hooks._helpers.AttentionProcessorRegistry``) while attnlab's processors stand
    in for the originals; remove the entry when the last user restores it.

    diffusers' layer skip looks a module's skip output up by ``module.processor.__class__``
    when the hook is applied (its guiders, PAG and skip-layer guidance, apply it per pass,
    while attnlab is installed): the entry delegates to the entry of the original processor
    the attnlab processor wraps, so the hook does what it does without attnlab (and raises
    diffusers' own error where the original is not registered).
    """

    _users: ClassVar[dict[type, int]] = {}

    def __init__(self, cls: type, description: str | None = None):
        super().__init__(
            cls, description or f"diffusers AttentionProcessorRegistry[{cls.__name__}]"
        )

    def _apply(self) -> None:
        from diffusers.hooks._helpers import AttentionProcessorMetadata, AttentionProcessorRegistry

        users = SkipRegistryPatch._users
        if not users.get(self.target):
            AttentionProcessorRegistry._register()  # diffusers' own entries first
            AttentionProcessorRegistry._registry[self.target] = AttentionProcessorMetadata(
                skip_processor_output_fn=_skip_output_of_original
            )
        users[self.target] = users.get(self.target, 0) + 1

    def _restore(self) -> None:
        from diffusers.hooks._helpers import AttentionProcessorRegistry

        users = SkipRegistryPatch._users
        users[self.target] -= 1
        if not users[self.target]:
            del users[self.target]
            AttentionProcessorRegistry._registry.pop(self.target, None)


def _skip_output_of_original(module: Any, *args: Any, **kwargs: Any) -> Any:
    """The skip output diffusers registers for the processor an attnlab processor wraps."""
    from diffusers.hooks._helpers import AttentionProcessorRegistry

    processor = module.processor
    original = getattr(processor, "original", processor)
    entry = AttentionProcessorRegistry.get(type(original))
    return entry.skip_processor_output_fn(module, *args, **kwargs)
