"""The PyTorch source: a model loaded (torchvision name, ``package.module:callable`` or an
nn.Module), traced with torch.fx, cut into ``f`` and ``g`` (a ViT's token tail built in
torch), written through the artifact writer (:mod:`export.artifact`).

Inside this package ``import torch`` is PyTorch itself (imports are absolute); this package
is ``export.torch``."""
