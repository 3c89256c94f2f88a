"""Small models for tests, importable as ``toy_models:<factory>`` (tests/ is on sys.path)."""

from __future__ import annotations

import torch
from torch import nn

TOY_INPUT = {"size": 32, "resize": "direct", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


class TinyGapNet(nn.Module):
    """conv → relu → conv → relu → GAP → linear: a GAP head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                                  nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)
        self.reciprocam_input = dict(TOY_INPUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))


class TinyFlattenNet(nn.Module):
    """A head that flattens the map into a linear layer: no GAP, so the full ``g`` runs."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1),
                                  nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(4 * 8 * 8, classes))
        self.reciprocam_input = dict(TOY_INPUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class MlpHeadNet(nn.Module):
    """GAP → Linear → ReLU → Linear: a pooled tail that is not affine."""

    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                                  nn.ReLU())
        self.head = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, classes))
        self.reciprocam_input = dict(TOY_INPUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3)))


class TwoInputNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3)) + self.conv(y).mean((2, 3))


class MapOutputNet(nn.Module):
    """Returns a 4-D map, not class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.reciprocam_input = dict(TOY_INPUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def tiny_gap() -> nn.Module:
    torch.manual_seed(0)
    return TinyGapNet().eval()


def tiny_flatten() -> nn.Module:
    torch.manual_seed(0)
    return TinyFlattenNet().eval()


def tiny_mlp_head() -> nn.Module:
    torch.manual_seed(0)
    return MlpHeadNet().eval()


def blind_class() -> nn.Module:
    """A GAP head whose class 0 ignores the features and always wins: its map is all zeros."""
    model = tiny_gap()
    with torch.no_grad():
        model.fc.weight[0] = 0.0
        model.fc.bias[0] = 100.0
    return model


def two_inputs() -> nn.Module:
    return TwoInputNet()


def map_output() -> nn.Module:
    return MapOutputNet()


def not_a_module() -> int:
    return 42


def broken() -> nn.Module:
    raise RuntimeError("factory exploded")


class BrightNaNNet(TinyGapNet):
    """Gives NaN scores for inputs brighter than the export check's (log of a negative)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 0.0 * torch.log(20.0 - x.amax())
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))


def bright_nan() -> nn.Module:
    torch.manual_seed(0)
    model = BrightNaNNet().eval()
    model.reciprocam_input = {**TOY_INPUT, "mean": (0.0, 0.0, 0.0), "std": (0.01, 0.01, 0.01)}
    return model


class GrayNet(TinyGapNet):
    """Expects one-channel (grayscale) images."""

    def __init__(self) -> None:
        super().__init__()
        self.body[0] = nn.Conv2d(1, 8, 3, 2, 1)


def gray() -> nn.Module:
    torch.manual_seed(0)
    return GrayNet().eval()


def sized(height: int = 64, width: int = 64) -> nn.Module:
    """TinyGapNet declaring its input size as an (H, W) pair."""
    model = tiny_gap()
    model.reciprocam_input = {**TOY_INPUT, "size": (height, width)}
    return model


def sized_48x64() -> nn.Module:
    return sized(48, 64)


class BatchNormalisedNet(TinyGapNet):
    """Scores divided by their largest magnitude over the whole batch: images are coupled."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = super().forward(x)
        return scores / scores.abs().amax()


def batch_normalised() -> nn.Module:
    torch.manual_seed(0)
    return BatchNormalisedNet().eval()


class BatchOneNet(TinyGapNet):
    """A head that reshapes to batch 1: right for one image, wrong for a batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.body(x)).reshape(1, -1))


def batch_one() -> nn.Module:
    torch.manual_seed(0)
    return BatchOneNet().eval()


def constant_scores() -> nn.Module:
    """Scores equal to the bias whatever the image (as torchvision's random GoogLeNet)."""
    model = tiny_gap()
    with torch.no_grad():
        model.fc.weight.zero_()
    return model


class ConvHeadNet(nn.Module):
    """SqueezeNet's head: 1x1 conv to the classes, ReLU, GAP, flatten (no linear layer)."""

    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Conv2d(8, classes, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))
        self.reciprocam_input = dict(TOY_INPUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def conv_head() -> nn.Module:
    torch.manual_seed(0)
    return ConvHeadNet().eval()


def tiny_vit(num_layers: int = 2) -> nn.Module:
    """torchvision's VisionTransformer, tiny: 32x32 input, 8x8 patches (a 4x4 grid, 17
    tokens of width 16), 2 heads; its zero-initialised head drawn at random."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=num_layers, num_heads=2,
                              hidden_dim=16, mlp_dim=32, num_classes=10)
    nn.init.normal_(model.heads.head.weight)
    nn.init.normal_(model.heads.head.bias)
    model.reciprocam_input = dict(TOY_INPUT)
    return model.eval()


def tiny_vit_affine() -> nn.Module:
    """tiny_vit with non-trivial LayerNorm scales and shifts and attention biases (torch
    initialises them to 1 and 0), so masking a LayerNorm's output differs from its input."""
    model = tiny_vit()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))
            if isinstance(module, nn.MultiheadAttention):
                module.in_proj_bias.copy_(0.3 * torch.randn(module.in_proj_bias.shape,
                                                            generator=generator))
    return model


class MeanPooledViT(nn.Module):
    """A ViT whose head averages all tokens (no class-token read)."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = tiny_vit()
        self.reciprocam_input = dict(TOY_INPUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit._process_input(x)
        tokens = torch.cat([self.vit.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        return self.vit.heads(self.vit.encoder(tokens).mean(dim=1))


def mean_pooled_vit() -> nn.Module:
    return MeanPooledViT().eval()


class TwoTokenViT(MeanPooledViT):
    """A ViT with two leading tokens (class and distillation, as DeiT): 2 + 16 tokens."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.vision_transformer import Encoder

        self.vit.encoder = Encoder(18, 2, 2, 16, 32, 0.0, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit._process_input(x)
        lead = self.vit.class_token.expand(x.shape[0], 2, -1)
        return self.vit.heads(self.vit.encoder(torch.cat([lead, tokens], dim=1))[:, 0])


def two_token_vit() -> nn.Module:
    torch.manual_seed(0)
    return TwoTokenViT().eval()


class UnfoldViT(nn.Module):
    """Patches by unfold and a linear layer (no 4-D patch map) on a 32x48 input: 1 + 24
    tokens, not 1 + a square, and nothing shows the 4x6 grid."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.vision_transformer import Encoder

        self.embed = nn.Linear(3 * 8 * 8, 16)
        self.class_token = nn.Parameter(torch.randn(1, 1, 16))
        self.encoder = Encoder(25, 2, 2, 16, 32, 0.0, 0.0)
        self.head = nn.Linear(16, 10)
        self.reciprocam_input = {**TOY_INPUT, "size": (32, 48)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.embed(nn.functional.unfold(x, 8, stride=8).transpose(1, 2))
        lead = self.class_token.expand(x.shape[0], -1, -1)
        return self.head(self.encoder(torch.cat([lead, patches], dim=1))[:, 0])


def unfold_vit() -> nn.Module:
    torch.manual_seed(0)
    return UnfoldViT().eval()


def vit_b_32_shallow() -> nn.Module:
    """torchvision's ViT-B/32 (224 px, 32 px patches, width 768, 12 heads, MLP 3072) with 2 of
    its 12 encoder layers, without weights, seeded (its zeroed head drawn as ``--weights
    none`` draws it), so that a test can build the same model again. Every layer is alike, so
    the cut at the last one sees what the full model's does, at a sixth of the export."""
    from torchvision.models.vision_transformer import VisionTransformer

    from export.torch.model_source import draw_zero_layers

    torch.manual_seed(0)
    model = VisionTransformer(image_size=224, patch_size=32, num_layers=2, num_heads=12,
                              hidden_dim=768, mlp_dim=3072)
    draw_zero_layers(model)
    return model.eval()


def draw_transformer_weights(model: nn.Module) -> nn.Module:
    """``model`` in eval mode, its LayerNorms given scales and shifts away from 1 and 0 and its
    linear layers drawn wide with biases (seeded): timm draws std 0.02 and zero biases, which
    leave the maps flat and masking a LayerNorm's output like masking its input."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))
            if isinstance(module, nn.Linear):
                bound = 2 * module.in_features ** -0.5
                module.weight.uniform_(-bound, bound, generator=generator)
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))
    return model.eval()


def tiny_timm_vit() -> nn.Module:
    """timm's VisionTransformer as ``timm.create_model`` makes DeiT-Tiny, at 32x32 with 8x8
    patches, 2 blocks of width 32 and 2 heads (a 4x4 grid), LayerScale, and linear layers and
    affine LayerNorms drawn (seeded): it carries DeiT-Tiny's ``pretrained_cfg``."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=6,
                              img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                              init_values=0.5)
    return draw_transformer_weights(model)


class HfSelfAttention(nn.Module):
    """Hugging Face's ViTSelfAttention + ViTSelfOutput: separate query, key and value
    projections, q·kᵀ/√d (eager) or ``scaled_dot_product_attention`` (``sdpa``), then dense."""

    def __init__(self, width: int, heads: int, sdpa: bool) -> None:
        super().__init__()
        self.heads, self.size, self.sdpa = heads, width // heads, sdpa
        self.scale = self.size ** -0.5
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.dense = nn.Linear(width, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1, self.heads, self.size).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        if self.sdpa:
            context = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
            context = torch.matmul(nn.functional.softmax(scores, dim=-1), v)
        context = context.permute(0, 2, 1, 3).contiguous()
        return self.dense(context.view(context.shape[0], -1, self.heads * self.size))


class HfLayer(nn.Module):
    """Hugging Face's ViTLayer: layernorm_before → attention → residual → layernorm_after →
    intermediate dense + GELU (erf) → output dense → residual."""

    def __init__(self, width: int, heads: int, sdpa: bool, mlp: int = 2) -> None:
        super().__init__()
        self.layernorm_before = nn.LayerNorm(width, eps=1e-12)
        self.attention = HfSelfAttention(width, heads, sdpa)
        self.layernorm_after = nn.LayerNorm(width, eps=1e-12)
        self.intermediate = nn.Linear(width, mlp * width)
        self.output = nn.Linear(mlp * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.layernorm_before(x)) + x
        hidden = nn.functional.gelu(self.intermediate(self.layernorm_after(x)))
        return self.output(hidden) + x


class HfViT(nn.Module):
    """Hugging Face's ViTForImageClassification in structure (transformers is not a
    dependency): patch embedding conv, class token and position embeddings, ``depth``
    layers (MLP width ``mlp``·width), final layernorm, classifier on token 0."""

    def __init__(self, size: int = 32, patch: int = 8, width: int = 32, depth: int = 2,
                 heads: int = 2, classes: int = 6, sdpa: bool = False, mlp: int = 2) -> None:
        super().__init__()
        self.patch_embeddings = nn.Conv2d(3, width, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width))
        self.position_embeddings = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, width))
        self.layer = nn.ModuleList(HfLayer(width, heads, sdpa, mlp) for _ in range(depth))
        self.layernorm = nn.LayerNorm(width, eps=1e-12)
        self.classifier = nn.Linear(width, classes)
        self.reciprocam_input = dict(TOY_INPUT, size=size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embeddings(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embeddings
        for layer in self.layer:
            tokens = layer(tokens)
        return self.classifier(self.layernorm(tokens)[:, 0, :])


def hf_vit(sdpa: bool = False) -> nn.Module:
    """A 2-block HfViT at 32x32 (a 4x4 grid, width 32, 2 heads), seeded weights with
    non-trivial LayerNorm scales and shifts and biases."""
    torch.manual_seed(0)
    model = HfViT(sdpa=sdpa)
    return draw_transformer_weights(model)


def hf_vit_sdpa() -> nn.Module:
    return hf_vit(sdpa=True)


def hf_vit_odd_scale() -> nn.Module:
    """hf_vit whose last attention scales q·k by 0.3, not 1/√d: the shortcut's ops, not its
    function."""
    model = hf_vit()
    model.layer[1].attention.scale = 0.3
    return model


def offset_scores() -> nn.Module:
    """Scores near 100 that the masked maps move by about 4e-3: bf16's step there is 0.5.

    OpenVINO CPU keeps the bias add in f32, so ``g`` alone gives f32's spread at bf16; the
    explain graph, whose normalisation runs in bf16, flattens every map to one value."""
    torch.manual_seed(0)
    model = TinyFlattenNet().eval()
    with torch.no_grad():
        model.head[-1].weight.mul_(0.1)
        model.head[-1].bias.fill_(100.0)
    return model
