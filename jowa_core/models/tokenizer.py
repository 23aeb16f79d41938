"""The JOWA VQ-VAE tokenizer: an 84x84 grayscale frame <-> 36 tokens (a 6x6 grid, vocabulary 2048).

Architecture and parameter names follow the official implementation exactly (taming-transformers'
encoder/decoder as modified by IRIS and JOWA; reference §1), so the released ``tokenizer.pt`` loads with
``load_tokenizer("tokenizer.pt")`` (its ``lpips.*`` keys are the perceptual loss network, see
``jowa_core.models.lpips``). Details that matter for compatibility:

* GroupNorm with **2** groups (eps 1e-6, affine), swish nonlinearity; ResnetBlock = GN, swish, conv3x3, GN,
  swish, dropout, conv3x3, plus the input (a 1x1 ``nin_shortcut`` only when the channel count changes).
* Encoder: conv_in, 3 levels of 2 ResnetBlocks (attention after each block at resolutions 12 and 6),
  downsampling pad (0,1,0,1) + conv k=8 s=7 (84 -> 12), then pad + conv k=3 s=2 (12 -> 6); mid (Res, Attn,
  Res); GN, swish, conv_out 64 -> 512. ``pre_quant_conv`` 1x1 512 -> 512.
* Decoder: ``post_quant_conv`` 1x1, conv_in 512 -> 64, mid (Res, Attn, Res), then 3 levels of 3
  ResnetBlocks with nearest upsampling x7 (6 -> 42) and x2 (42 -> 84), GN, swish, conv_out 64 -> 1. The
  official decoder hard-codes ``curr_res = 4``, so the resolution it tracks never equals 6 or 12 and **its up
  path has no attention blocks** (only ``mid.attn_1``). ``decoder_up_attention=False`` keeps that.
* Quantizer: token = argmin ||z||^2 + ||e||^2 - 2 z.e (no normalisation, no EMA); tokens are flattened row
  major (h, then w). Under bf16 autocast (how the official code built its token dataset) the matmul runs in
  bf16, so float32 tokens can differ from bf16 ones where two codes are nearly equidistant.
* Input x in [0, 1] is mapped to 2x - 1; the decoder output y maps back with (y + 1) / 2, clamped to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jowa_core import checkpoint as ckpt
from jowa_core.config import ConfigError, from_dict, to_dict

KIND = "tokenizer"


@dataclass
class TokenizerConfig:
    """VQ-VAE architecture; the defaults are the released JOWA tokenizer (paper Tables 7-8, reference §1.1)."""

    vocab_size: int = 2048
    embed_dim: int = 512
    resolution: int = 84
    in_channels: int = 1
    out_channels: int = 1
    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 1, 1)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (6, 12)
    z_channels: int = 512
    dropout: float = 0.0
    norm_groups: int = 2  # GroupNorm groups (IRIS: 32; JOWA: 2)
    downsample_factors: tuple[int, ...] = (7, 2)  # encoder, level 0 first: 84 -> 12 -> 6
    upsample_factors: tuple[int, ...] = (7, 2)  # decoder, lowest resolution first: 6 -> 42 -> 84
    decoder_up_attention: bool = False  # official: False (the `curr_res = 4` quirk)
    # False: no middle block (ResNet + attention + ResNet) in the encoder, whose attention mixes the whole frame
    # into every token; with num_res_blocks=0 each token then sees only its own cell and its 8 neighbours
    # (not in the paper; the official tokenizer has it: True).
    encoder_mid: bool = True
    commitment_beta: float = 1.0

    def __post_init__(self) -> None:
        for name in ("ch_mult", "attn_resolutions", "downsample_factors", "upsample_factors"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))  # lists (YAML, JSON) -> tuples
        n = len(self.ch_mult)
        if n < 1:
            raise ConfigError("tokenizer: ch_mult needs at least one level")
        if len(self.downsample_factors) != n - 1 or len(self.upsample_factors) != n - 1:
            raise ConfigError(
                f"tokenizer: {n} levels need {n - 1} downsample_factors and upsample_factors, got "
                f"{list(self.downsample_factors)} and {list(self.upsample_factors)}"
            )
        for c in [self.ch * m for m in self.ch_mult]:
            if c % self.norm_groups:
                raise ConfigError(f"tokenizer: {c} channels are not divisible by norm_groups={self.norm_groups}")
        res = self.resolution
        for f in self.downsample_factors:
            res //= f
        up = res * math.prod(self.upsample_factors)
        if res < 1 or up != self.resolution:
            raise ConfigError(
                f"tokenizer: resolution {self.resolution} down by {list(self.downsample_factors)} gives {res}, "
                f"which up by {list(self.upsample_factors)} gives {up}, not {self.resolution}"
            )
        if self.vocab_size < 2 or self.vocab_size > 32768:
            raise ConfigError(f"tokenizer: vocab_size must be in 2..32768 (tokens are stored as int16), "
                              f"got {self.vocab_size}")

    @property
    def latent_resolution(self) -> int:
        res = self.resolution
        for f in self.downsample_factors:
            res //= f
        return res

    @property
    def tokens_per_frame(self) -> int:
        return self.latent_resolution**2


# --------------------------------------------------------------------------------------------------------
# Building blocks (taming-transformers' names, which the state-dict keys come from)


def swish(x: Tensor) -> Tensor:
    return F.silu(x)  # x * sigmoid(x), fused


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over the h*w positions, scaled by c^-0.5, with a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h_ = self.norm(x)
        b, c, h, w = x.shape
        q, k, v = (m(h_).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Zero pad right/bottom by 1, then conv k=factor+1, stride factor: in -> in // factor."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=factor + 1, stride=factor, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.factor = float(factor)
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.factor, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (maybe empty), optional down/upsample."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, dropout, groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        g = cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, 1, 1)
        res = cfg.resolution
        in_mult = (1, *cfg.ch_mult)
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            level = _Level()
            block_in = cfg.ch * in_mult[i]
            block_out = cfg.ch * mult
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(block_in, g))
            if i < len(cfg.ch_mult) - 1:
                level.downsample = Downsample(block_in, cfg.downsample_factors[i])
                res //= cfg.downsample_factors[i]
            self.down.append(level)
        self.mid = _Mid(block_in, cfg.dropout, g) if cfg.encoder_mid else nn.Identity()
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[i](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        g = cfg.norm_groups
        n = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.latent_resolution
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = _Mid(block_in, cfg.dropout, g)
        levels: list[_Level] = []
        for k, i in enumerate(reversed(range(n))):  # lowest resolution first; stored with up[0] = full res
            level = _Level()
            block_out = cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if cfg.decoder_up_attention and res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(block_in, g))
            if i != 0:
                level.upsample = Upsample(block_in, cfg.upsample_factors[k])
                res *= cfg.upsample_factors[k]
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[i](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


def init_tokenizer_weights(module: nn.Module) -> None:
    """Official init of the encoder and decoder: orthogonal weights (relu gain for convs), zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.orthogonal_(module.weight, nn.init.calculate_gain("relu"))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------------------
# Tokenizer


class Tokenizer(nn.Module):
    """VQ-VAE: ``encode`` frames to tokens, ``decode`` tokens to frames, ``compute_loss`` for training."""

    def __init__(self, config: TokenizerConfig | None = None):
        super().__init__()
        self.config = cfg = config or TokenizerConfig()
        self.encoder = Encoder(cfg)
        self.pre_quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)
        # As the official code: encoder/decoder orthogonal, codebook uniform(+-1/V), 1x1 convs PyTorch default.
        self.encoder.apply(init_tokenizer_weights)
        self.decoder.apply(init_tokenizer_weights)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / cfg.vocab_size, 1.0 / cfg.vocab_size)

    @property
    def cfg(self) -> TokenizerConfig:
        """Alias of ``config``."""
        return self.config

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    @property
    def tokens_per_frame(self) -> int:
        return self.config.tokens_per_frame

    # ---- pieces

    def preprocess(self, frames: Tensor | np.ndarray) -> Tensor:
        """Frames -> (B, C, H, W) float32 in [-1, 1] on the model's device.

        Accepts uint8 in [0, 255] or float in [0, 1], shaped (B, H, W) (single channel) or (B, C, H, W).
        """
        if isinstance(frames, np.ndarray) and not frames.flags.writeable:
            frames = frames.copy()  # torch warns about (and cannot own) read-only numpy buffers
        x = torch.as_tensor(frames).to(self.device, non_blocking=True)
        cfg = self.config
        if x.ndim == 3 and cfg.in_channels == 1:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1:] != (cfg.in_channels, cfg.resolution, cfg.resolution):
            raise ValueError(
                f"frames of shape {tuple(x.shape)}; expected (B, {cfg.resolution}, {cfg.resolution}) or "
                f"(B, {cfg.in_channels}, {cfg.resolution}, {cfg.resolution})"
            )
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif x.is_floating_point():
            x = x.float()
        else:
            raise ValueError(f"frames of dtype {x.dtype}; expected uint8 or float in [0, 1]")
        return x.mul(2.0).sub(1.0)

    def encode_latents(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [-1, 1] -> z (B, embed_dim, h, w), before quantization."""
        return self.pre_quant_conv(self.encoder(x))

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (B, E, h, w) -> (tokens (B, h*w) int64 row-major, z_q (B, E, h, w) codebook vectors)."""
        b, e, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, e)
        codebook = self.embedding.weight
        dist = flat.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * flat @ codebook.t()
        tokens = dist.argmin(dim=-1)
        z_q = self.embedding(tokens).view(b, h, w, e).permute(0, 3, 1, 2).contiguous()
        return tokens.view(b, h * w), z_q

    def decode_latents(self, z_q: Tensor) -> Tensor:
        """(B, E, h, w) -> decoder output (B, C, H, W) in (about) [-1, 1]."""
        return self.decoder(self.post_quant_conv(z_q))

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """tokens (B, h*w) -> z_q (B, E, h, w)."""
        r = self.config.latent_resolution
        tokens = torch.as_tensor(tokens, device=self.device).long()
        if tokens.ndim != 2 or tokens.shape[1] != r * r:
            raise ValueError(f"tokens of shape {tuple(tokens.shape)}; expected (B, {r * r})")
        return self.embedding(tokens).view(-1, r, r, self.config.embed_dim).permute(0, 3, 1, 2).contiguous()

    # ---- public API

    @torch.no_grad()
    def encode(self, frames: Tensor | np.ndarray) -> Tensor:
        """Frames (uint8 (B,84,84) / (B,1,84,84), or float in [0, 1]) -> tokens (B, 36) int64.

        Runs in float32 unless called inside ``torch.autocast(..., dtype=torch.bfloat16)``, which is how the
        official code tokenized its dataset; the two can disagree on near-ties.
        """
        tokens, _ = self.quantize(self.encode_latents(self.preprocess(frames)))
        return tokens

    @torch.no_grad()
    def decode(self, tokens: Tensor | np.ndarray) -> Tensor:
        """Tokens (B, 36) -> frames (B, 1, 84, 84) float32 in [0, 1]."""
        y = self.decode_latents(self.embed_tokens(tokens))
        return y.float().add(1.0).div(2.0).clamp(0.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, frames: Tensor | np.ndarray) -> Tensor:
        """``decode(encode(frames))``: (B, 1, 84, 84) float32 in [0, 1]."""
        return self.decode(self.encode(frames))

    def compute_loss(self, frames: Tensor | np.ndarray, perceptual: nn.Module | None = None,
                     return_tokens: bool = False) -> dict[str, Tensor]:
        """Training losses of a batch of frames (uint8, or float in [0, 1]).

        ``reconstruction`` mean |x - x_hat| in [-1, 1] space; ``commitment`` mean (sg(z) - z_q)^2 +
        beta * mean (z - sg(z_q))^2 (beta = 1); ``perceptual`` mean LPIPS(x, x_hat) when an LPIPS module is
        given; ``total`` their sum (weights 1). The decoder sees z + sg(z_q - z) (straight-through).
        With ``return_tokens`` the dict also holds ``tokens`` (B, 36) and the encoder outputs ``latents``
        (B*36, embed_dim), both detached.
        """
        x = self.preprocess(frames)
        z = self.encode_latents(x)
        tokens, z_q = self.quantize(z)
        z, z_q = z.float(), z_q.float()
        rec = self.decode_latents(z + (z_q - z).detach()).float()
        out = {
            "reconstruction": (x - rec).abs().mean(),
            "commitment": (z.detach() - z_q).pow(2).mean()
            + self.config.commitment_beta * (z - z_q.detach()).pow(2).mean(),
        }
        if perceptual is not None:
            out["perceptual"] = perceptual(x, rec).float().mean()
        out["total"] = sum(out.values())
        if return_tokens:
            out["tokens"] = tokens.detach()
            out["latents"] = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        return out


@torch.no_grad()
def restart_dead_codes(codebook: Tensor, age: Tensor, tokens: Tensor, latents: Tensor, patience: int) -> int:
    """Codebook restarts: ``age`` (V,) counts the consecutive steps each code went unused; codes unused for
    ``patience`` steps are re-initialised, in place, to encoder outputs drawn at random from ``latents`` (N, E)
    (the torch RNG). Not in the paper; it keeps small or short runs from collapsing onto a few codes. Returns
    how many codes were restarted."""
    used = torch.zeros_like(age, dtype=torch.bool)
    used[tokens.flatten()] = True
    age.add_(1).masked_fill_(used, 0)
    dead = (age >= patience).nonzero().flatten()
    if len(dead):
        pick = torch.randint(len(latents), (len(dead),), device=latents.device)
        codebook[dead] = latents[pick].to(codebook.dtype)
        age[dead] = 0
    return len(dead)


# --------------------------------------------------------------------------------------------------------
# Checkpoints


def tokenizer_tensors(tok: Tokenizer) -> dict[str, Tensor]:
    return {k: v for k, v in tok.state_dict().items()}


def save_tokenizer(tok: Tokenizer, path: str | Path, **extra: Any) -> Path:
    """A model checkpoint directory (kind "tokenizer"; ``config`` = the TokenizerConfig), written atomically."""
    return ckpt.save_model(path, KIND, to_dict(tok.config), tokenizer_tensors(tok), **extra)


def resolve_tokenizer(path: str | Path) -> Path:
    """The file or checkpoint directory ``load_tokenizer(path)`` reads.

    A run directory resolves to its ``final`` checkpoint when there is one, else its latest step checkpoint;
    a ``.pt``/``.pth``/``.safetensors`` file is itself (an official or bare state dict).
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise ckpt.CheckpointError(f"{path} does not exist")
    if not (path / ckpt.META).is_file() and (path / "final" / ckpt.META).is_file():
        return ckpt.resolve(path / "final", KIND)
    return ckpt.resolve(path, KIND)


def weights_file(path: str | Path) -> Path:
    """The file holding a tokenizer's weights (for fingerprints): ``model.safetensors`` or the file itself."""
    p = resolve_tokenizer(path)
    return p if p.is_file() else p / ckpt.WEIGHTS


def fingerprint(path: str | Path) -> str:
    """sha256 of a tokenizer's weights file: what ``jowa tokenize`` stamps on the tokens it writes, what pretraining
    records, and what evaluation checks (``checkpoint.check_tokens_tokenizer``)."""
    return ckpt.sha256_file(weights_file(path))


def load_tokenizer(path: str | Path, device: str | torch.device = "cpu",
                   config: TokenizerConfig | None = None) -> Tokenizer:
    """A tokenizer in eval mode from a checkpoint directory, a run directory (``final`` or latest checkpoint),
    or a state-dict file such as the official ``tokenizer.pt`` (keys with an optional ``module.`` prefix;
    ``lpips.*`` keys are ignored; the architecture is ``config`` or the default with the codebook size read
    from ``embedding.weight``)."""
    p = resolve_tokenizer(path)
    if p.is_file():
        state, _ = ckpt.strip_wrapper_prefix(ckpt.read_state_file(p))
        state = {k: v for k, v in state.items() if not k.startswith("lpips.")}
        if config is None:
            emb = state.get("embedding.weight")
            if emb is None:
                raise ckpt.CheckpointError(f"{p}: no embedding.weight; not a tokenizer state dict")
            config = TokenizerConfig(vocab_size=int(emb.shape[0]), embed_dim=int(emb.shape[1]))
        tok = Tokenizer(config)
        ckpt.load_state_dict_checked(tok, state, p)
    else:
        meta = ckpt.read_meta(p)
        try:
            cfg = from_dict(TokenizerConfig, meta.get("config") or {})
        except ConfigError as e:
            raise ckpt.CheckpointError(f"{p / ckpt.META}: bad tokenizer config: {e}") from None
        tok = Tokenizer(cfg)
        ckpt.load_state_dict_checked(tok, ckpt.load_checkpoint_tensors(p), p / ckpt.WEIGHTS)
    return tok.to(device).eval()
