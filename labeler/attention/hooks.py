"""Installing labeler's attention processors on a UNet once, and putting the originals back.

A segmenter builds its processors and its sinks at construction and installs them with one
:class:`AttentionHooks`; every batch then only resets its sinks and runs the UNet, so the
module graph stays the same from batch to batch (nothing in the per-batch path calls
``set_attn_processor``, which keeps ``torch.compile`` from recompiling).

Several hook sets may share one UNet (a validation segmenter built on a fitter's backbone, tests
on one session model). Each processor remembers the processor it replaced
(:attr:`ProjectingProcessor.replaces <labeler.attention.processor.ProjectingProcessor>`),
so whatever is installed, the UNet's own processors are known: installing puts them back on the
layers a hook set does not use, :meth:`AttentionHooks.restore` puts them back on the layers it
does, and :meth:`AttentionHooks.ensure` re-installs a hook set that another one displaced (one
identity check per hooked layer when nothing was displaced, the normal case).
"""

from __future__ import annotations

from collections.abc import Mapping

from labeler.attention.processor import ProjectingProcessor


class AttentionHooks:
    """A set of processors installed on named attention layers of one UNet.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (anything with ``attn_processors`` and
            ``set_attn_processor``).
        processors: processor key (see :func:`labeler.attention.layers.unet_attention_layers`)
            to the processor for that layer. Installed at once.

    Raises:
        ValueError: a key that is not an attention layer of ``unet``.
    """

    def __init__(self, unet, processors: Mapping[str, ProjectingProcessor]) -> None:
        unknown = set(processors) - set(unet.attn_processors)
        if unknown:
            raise ValueError(f"no such attention layers: {sorted(unknown)[:3]}")
        self.unet = unet
        self.processors = dict(processors)
        self._modules = {
            key: unet.get_submodule(key.removesuffix(".processor")) for key in self.processors
        }
        self.install()

    @property
    def installed(self) -> bool:
        """Whether every processor of this set is the one its layer runs now."""
        return all(
            self._modules[key].processor is processor for key, processor in self.processors.items()
        )

    def install(self) -> None:
        """Put this set's processors on their layers and the UNet's own on every other layer."""
        layout = {}
        for key, current in self.unet.attn_processors.items():
            original = _original(current)
            if key in self.processors:
                self.processors[key].replaces = original
                layout[key] = self.processors[key]
            else:
                layout[key] = original
        self.unet.set_attn_processor(layout)

    def ensure(self) -> None:
        """Re-install this set if another one displaced it since (a no-op otherwise)."""
        if not self.installed:
            self.install()

    def restore(self) -> None:
        """Give the layers this set holds their original processors back."""
        current = self.unet.attn_processors
        if not any(current[key] is processor for key, processor in self.processors.items()):
            return
        layout = {
            key: _original(processor) if self.processors.get(key) is processor else processor
            for key, processor in current.items()
        }
        self.unet.set_attn_processor(layout)


def _original(processor):
    """The UNet's own processor behind ``processor`` (itself when it is not a labeler one)."""
    if isinstance(processor, ProjectingProcessor) and processor.replaces is not None:
        return processor.replaces
    return processor
