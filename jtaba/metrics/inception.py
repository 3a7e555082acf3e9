"""The FID Inception-v3 ("pt_inception-2015-12-05", the TensorFlow FID graph ported to PyTorch) in Flax: 2048-d
pool3 features (and the 1008-way logits) as pytorch-fid, torch-fidelity and clean-fid compute them (paper Sec. 4.1).

Network (family ``inception_fid``): torchvision ``Inception3`` with pytorch-fid's patched blocks
(``FIDInceptionA/C``: the branch average pool excludes the zero padding, ``count_include_pad=False``;
``FIDInceptionE_1`` likewise; ``FIDInceptionE_2``: max pool in the pool branch), BasicConv2d = conv (no bias) +
BatchNorm (eval, eps 1e-3) + ReLU, global average pool -> (B, 2048). torch-fidelity's ``FeatureExtractorInceptionV3``
is the same network with the same weights file (``weights-inception-2015-12-05-6726825d.pth``); only the input
pipeline differs. Params mirror the torch names: ``Mixed_6b/branch7x7_2/{conv/kernel, bn/{scale,bias,mean,var}}``,
``fc/{kernel,bias}``; the BatchNorm running statistics are ordinary params (inference only).

Input pipelines (``protocol``), all NCHW in, everything inside one jit:

* ``"pytorch_fid"``: images in [0, 1] -> ``F.interpolate(size=(299, 299), mode="bilinear", align_corners=False)``
  (half-pixel centres, no antialias) -> 2x − 1 (pytorch-fid ``InceptionV3(resize_input=True,
  normalize_input=True)``).
* ``"torch_fidelity"``: uint8 values [0, 255] -> TensorFlow-1.x ``resize_bilinear(align_corners=False)`` (source
  = dst · in/out, no half-pixel offset; torch-fidelity ``interpolate_bilinear_2d_like_tensorflow1x``) ->
  (x − 128) / 128. This is also what clean-fid's ``legacy_tensorflow`` mode does inside its TorchScript network.
* ``"clean_fid"``: clean-fid's ``clean`` mode resize: PIL bicubic on float32 per channel (``Image.fromarray(x,
  mode="F").resize((299, 299), BICUBIC)``, antialiased when downsizing), clipped to [0, 255], then (x − 128) / 128.
  clean-fid runs this on the nvlabs TorchScript Inception (the same TF graph); that file is not converted here.
* ``"none"``: no resize, the input is already the network's [-1, 1] image (any size >= 75).

``input_range`` says what the caller's values are: ``"unit"`` [0, 1], ``"signed"`` [-1, 1] or ``"uint8"`` [0, 255]
(float or integer arrays); they are mapped linearly to what the protocol expects. The reference protocols read
uint8 PNGs: to reproduce them exactly, quantise first (e.g. ``input_range="uint8"`` on the exported uint8 images).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jtaba.config import ConfigBase

FAMILY = "inception_fid"
SIZE = 299
PROTOCOLS = ("pytorch_fid", "torch_fidelity", "clean_fid", "none")
INPUT_RANGES = ("unit", "signed", "uint8")
BN_EPS = 1e-3


@dataclasses.dataclass(frozen=True)
class Config(ConfigBase):
    num_classes: int = 1008  # the TF graph's logits (1001 ImageNet classes padded to 1008); only fc uses it

    def __post_init__(self):
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"inception.Config.num_classes must be an int >= 1, got {self.num_classes!r}")


# ---- network ----------------------------------------------------------------------------------------------------
class BatchNormEval(nn.Module):
    """torch ``BatchNorm2d`` in eval mode: x · α + β, α = weight / sqrt(running_var + eps), β = bias − mean · α."""
    eps: float = BN_EPS

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = self.param("mean", nn.initializers.zeros, (c,))
        var = self.param("var", nn.initializers.ones, (c,))
        alpha = scale * (1.0 / jnp.sqrt(var + self.eps))
        beta = bias - mean * alpha
        return (x.astype(jnp.float32) * alpha + beta).astype(x.dtype)


class BasicConv(nn.Module):
    features: int
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        (ph, pw) = self.padding
        x = nn.Conv(self.features, self.kernel, strides=self.stride, padding=((ph, ph), (pw, pw)), use_bias=False,
                    dtype=self.dtype, name="conv")(x)
        return nn.relu(BatchNormEval(name="bn")(x))


def _avg_pool_3x3_same(x):
    """``F.avg_pool2d(kernel 3, stride 1, padding 1, count_include_pad=False)`` (TF's SAME average pool)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    pool_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = functools.partial(BasicConv, dtype=self.dtype)
        b1 = c(64, name="branch1x1")(x)
        b5 = c(64, (5, 5), padding=(2, 2), name="branch5x5_2")(c(48, name="branch5x5_1")(x))
        b3 = c(64, name="branch3x3dbl_1")(x)
        b3 = c(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = c(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = c(self.pool_features, name="branch_pool")(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = functools.partial(BasicConv, dtype=self.dtype)
        b3 = c(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = c(64, name="branch3x3dbl_1")(x)
        bd = c(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = c(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = functools.partial(BasicConv, dtype=self.dtype)
        c7 = self.channels_7x7
        row, col = {"kernel": (1, 7), "padding": (0, 3)}, {"kernel": (7, 1), "padding": (3, 0)}
        b1 = c(192, name="branch1x1")(x)
        b7 = c(c7, name="branch7x7_1")(x)
        b7 = c(c7, **row, name="branch7x7_2")(b7)
        b7 = c(192, **col, name="branch7x7_3")(b7)
        bd = c(c7, name="branch7x7dbl_1")(x)
        bd = c(c7, **col, name="branch7x7dbl_2")(bd)
        bd = c(c7, **row, name="branch7x7dbl_3")(bd)
        bd = c(c7, **col, name="branch7x7dbl_4")(bd)
        bd = c(192, **row, name="branch7x7dbl_5")(bd)
        bp = c(192, name="branch_pool")(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = functools.partial(BasicConv, dtype=self.dtype)
        b3 = c(320, (3, 3), stride=2, name="branch3x3_2")(c(192, name="branch3x3_1")(x))
        b7 = c(192, name="branch7x7x3_1")(x)
        b7 = c(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = c(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    max_pool: bool  # FIDInceptionE_2 (Mixed_7c): max pool in the pool branch; E_1: average without padding
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = functools.partial(BasicConv, dtype=self.dtype)
        row, col = {"kernel": (1, 3), "padding": (0, 1)}, {"kernel": (3, 1), "padding": (1, 0)}
        b1 = c(320, name="branch1x1")(x)
        b3 = c(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([c(384, **row, name="branch3x3_2a")(b3), c(384, **col, name="branch3x3_2b")(b3)], -1)
        bd = c(448, name="branch3x3dbl_1")(x)
        bd = c(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([c(384, **row, name="branch3x3dbl_3a")(bd), c(384, **col, name="branch3x3dbl_3b")(bd)],
                             -1)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3_same(x)
        bp = c(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Network(nn.Module):
    """FID Inception-v3 on NHWC images already in the network's range [-1, 1] (299x299 for FID; any size >= 75
    runs). Returns the pool3 features (B, 2048) float32, or (features, logits (B, num_classes)) with ``logits``."""
    config: Config = Config()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, logits: bool = False):
        c = functools.partial(BasicConv, dtype=self.dtype)
        x = x.astype(self.dtype)
        x = c(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = c(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = c(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = c(80, name="Conv2d_3b_1x1")(x)
        x = c(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, self.dtype, name="Mixed_5b")(x)
        x = InceptionA(64, self.dtype, name="Mixed_5c")(x)
        x = InceptionA(64, self.dtype, name="Mixed_5d")(x)
        x = InceptionB(self.dtype, name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, self.dtype, name=name)(x)
        x = InceptionD(self.dtype, name="Mixed_7a")(x)
        x = InceptionE(False, self.dtype, name="Mixed_7b")(x)
        x = InceptionE(True, self.dtype, name="Mixed_7c")(x)
        pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        # fc always exists (it is converted); its output is computed only when asked for
        fc = nn.Dense(self.config.num_classes, dtype=jnp.float32, name="fc")
        if logits or self.is_initializing():
            return pool, fc(pool)
        return pool


def init_params(config: Config = Config(), seed: int = 0, size: int = 75) -> dict:
    return Network(config).init(jax.random.key(seed), jnp.zeros((1, size, size, 3), jnp.float32))["params"]


# ---- resizes (NHWC float32, static sizes; index and weight tables computed in numpy) --------------------------
def _torch_linear_table(n_in: int, n_out: int):
    """torch upsample_bilinear2d (align_corners=False, no scale given) source indices/weights as its CPU kernel
    computes them: scale = in/out in float32, src = max(fma(scale, dst + 0.5, −0.5), 0) rounded once to float32
    (the fused multiply-add matters: a separately rounded product moves λ by up to ~30 ulp)."""
    scale = np.float64(np.float32(n_in) / np.float32(n_out))
    src = np.maximum(scale * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5, 0.0).astype(np.float32)
    i0 = src.astype(np.int64)
    lam = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (np.float32(1) - lam).astype(np.float32), lam


def resize_bilinear_torch(x: jax.Array, size: Sequence[int] = (SIZE, SIZE)) -> jax.Array:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` (antialias off) on NHWC: w0·a + w1·b
    along W, then along H."""
    for axis, n_out in ((2, size[1]), (1, size[0])):
        i0, i1, w0, w1 = _torch_linear_table(x.shape[axis], n_out)
        shape = [1] * x.ndim
        shape[axis] = n_out
        x = (jnp.take(x, i0, axis=axis) * w0.reshape(shape) + jnp.take(x, i1, axis=axis) * w1.reshape(shape))
    return x


def resize_bilinear_tf1(x: jax.Array, size: Sequence[int] = (SIZE, SIZE)) -> jax.Array:
    """TensorFlow 1.x ``resize_bilinear(align_corners=False)`` as torch-fidelity's
    ``interpolate_bilinear_2d_like_tensorflow1x`` computes it: src = dst · (in/out) in float32, lo = floor,
    hi = min(lo + 1, in − 1), a + (b − a)·t along W, then along H."""
    for axis, n_out in ((2, size[1]), (1, size[0])):
        n_in = x.shape[axis]
        src = np.arange(n_out, dtype=np.float32) * np.float32(n_in / n_out)
        lo = src.astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        t = (src - lo.astype(np.float32)).astype(np.float32)
        shape = [1] * x.ndim
        shape[axis] = n_out
        a = jnp.take(x, lo, axis=axis)
        x = a + (jnp.take(x, hi, axis=axis) - a) * t.reshape(shape)
    return x


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def pil_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 weights of Pillow's ``resize(BICUBIC)`` along one axis (``precompute_coeffs`` in
    libImaging/Resample.c: support 2 · max(scale, 1), taps normalised to sum 1)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    m = np.zeros((n_out, n_in), np.float64)
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        j = np.arange(xmin, xmax)
        w = _bicubic((j - center + 0.5) / filterscale)
        total = w.sum()
        m[xx, xmin:xmax] = w / total if total != 0 else w
    return m


def resize_bicubic_pil(x: jax.Array, size: Sequence[int] = (SIZE, SIZE)) -> jax.Array:
    """Pillow ``Image.resize((w, h), BICUBIC)`` of a float32 ("F" mode) image, per channel, NHWC: the horizontal
    pass first, then the vertical one (each skipped when that size is unchanged, as Pillow does)."""
    h, w = x.shape[1], x.shape[2]
    if size[1] != w:
        x = jnp.einsum("ow,bhwc->bhoc", jnp.asarray(pil_bicubic_matrix(w, size[1]), jnp.float32), x,
                       precision=jax.lax.Precision.HIGHEST)
    if size[0] != h:
        x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(pil_bicubic_matrix(h, size[0]), jnp.float32), x,
                       precision=jax.lax.Precision.HIGHEST)
    return x


def preprocess(images: jax.Array, input_range: str = "unit", protocol: str = "pytorch_fid") -> jax.Array:
    """NCHW images -> NHWC float32 299x299 network input in [-1, 1] by ``protocol`` (module docstring)."""
    if input_range not in INPUT_RANGES:
        raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) NCHW, got shape {tuple(images.shape)}")
    x = jnp.asarray(images).astype(jnp.float32).transpose(0, 2, 3, 1)
    if protocol in ("pytorch_fid", "none"):
        x = {"unit": x, "signed": (x + 1) / 2, "uint8": x / 255}[input_range]  # [0, 1]
        if protocol == "pytorch_fid":
            x = resize_bilinear_torch(x)
        return 2 * x - 1
    x = {"unit": x * 255, "signed": (x + 1) * 127.5, "uint8": x}[input_range]  # [0, 255]
    if protocol == "torch_fidelity":
        x = resize_bilinear_tf1(x)
    else:
        x = jnp.clip(resize_bicubic_pil(x), 0, 255)
    return (x - 128) / 128


@functools.partial(jax.jit, static_argnames=("config", "input_range", "protocol", "logits", "dtype"))
def features(config: Config, params: Any, images: jax.Array, input_range: str = "unit",
             protocol: str = "pytorch_fid", logits: bool = False, dtype: Any = jnp.float32):
    """FID pool3 features (B, 2048) float32 of NCHW ``images`` (or (features, logits) with ``logits``).
    ``input_range``: "unit" [0, 1], "signed" [-1, 1] or "uint8" [0, 255]; ``protocol``: "pytorch_fid" (default),
    "torch_fidelity", "clean_fid" or "none" (see the module docstring); ``dtype``: the conv compute dtype."""
    x = preprocess(images, input_range, protocol)
    return Network(config, dtype).apply({"params": params}, x, logits=logits)


def load(name_or_path: str, dtype: Any = None) -> tuple[Config, Any]:
    """(Config, params) of a converted FID Inception checkpoint (``convert/inception.py``): a folder or a name in
    the jtaba model home (e.g. ``inception_fid``)."""
    from jtaba.metrics.networks import read_checkpoint

    return read_checkpoint(name_or_path, FAMILY, Config, dtype)
