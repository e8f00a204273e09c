"""The floor of each benchmarked operation: the bytes it must move and the FLOPs it must do.

A kernel can be no faster than `max(bytes / bandwidth, FLOPs / peak)`. The
bytes count each tensor the operation must read or write once (activations,
weights, gradients; the shifted tensor of a fused kernel is never written),
the FLOPs count the multiply-adds of its GEMMs twice (shifts, BN, ReLU and
adds count 0, as in docs/spec.md section 5). The rates are the vendors'
*nominal* figures (`NOMINAL`), not measured ones: a measured copy reaches
roughly 85-90% of nominal HBM bandwidth and a tuned GEMM 70-80% of nominal
tensor-core FLOPs, so a ratio to floor of ~1.2 is "at the floor".

    python -m benchmarks.floors           # the table for the GPU shapes on an H200, markdown
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

# Nominal rates per GPU model (substring of torch.cuda.get_device_name): HBM bytes/s and dense
# tensor-core FLOP/s for 16-bit inputs and for TF32 (fp32 inputs), from the vendors' datasheets.
NOMINAL = {
    "H200": (4.8e12, 989e12, 494e12),
    "H100 NVL": (3.9e12, 835e12, 418e12),
    "H100 PCIe": (2.0e12, 756e12, 378e12),
    "H100": (3.35e12, 989e12, 494e12),  # SXM
    "A100": (2.0e12, 312e12, 156e12),  # 80 GB SXM; the 40 GB part has 1.56e12 B/s
}


@dataclass(frozen=True)
class Rates:
    """Nominal rates of one device: bytes/s, FLOP/s for 16-bit and for fp32 (TF32) GEMMs."""

    name: str
    bandwidth: float
    flops16: float
    flops32: float

    def floor_ms(self, nbytes: float, flops: float, element_size: int) -> float:
        peak = self.flops32 if element_size == 4 else self.flops16
        return 1e3 * max(nbytes / self.bandwidth, flops / peak)


def rates_for(device_name: str) -> Rates | None:
    """The nominal rates of a GPU by name (`None` for a CPU or an unlisted GPU)."""
    for key, (bw, f16, f32) in NOMINAL.items():  # longest keys first where they overlap
        if key in device_name:
            return Rates(key, bw, f16, f32)
    return None


@dataclass(frozen=True)
class Cost:
    nbytes: float
    flops: float


def cost(kernel: str, metric: str, shape: tuple[int, ...], element_size: int,
         c_out: int | None = None, mid: int | None = None) -> Cost | None:
    """Minimum bytes and FLOPs of one benchmarked operation (None where none is defined).

    `shape` is the activation `(N, C, H, W)`; `c_out` the 1x1's outputs (default C);
    `mid` the csc block's middle width (default C). Stride 1.
    """
    n, c, h, w = shape
    pix = n * h * w
    act = pix * c * element_size  # one activation tensor
    if kernel.startswith("shift_conv1x1"):
        co = c_out or c
        out = pix * co * element_size
        wt = c * co * element_size
        gemm = 2.0 * pix * c * co
        if metric == "fwd":  # read x and W, write y
            return Cost(act + wt + out, gemm)
        if metric == "fwd+bwd":  # + dx = shift^T(g @ W): read g, W, write dx; dW = g^T @ shift(x)
            return Cost((act + wt + out) + (out + wt + act) + (out + act + wt), 3 * gemm)
        return None
    if kernel.startswith(("shift", "active_shift")):
        if metric == "fwd":  # read x, write y (the active shift's four taps come from cache)
            return Cost(2 * act, 0.0)
        if metric == "fwd+bwd":
            if kernel.startswith("active_shift"):  # + dx (read g, write dx), dtheta (read x and g)
                return Cost(2 * act + 2 * act + 2 * act, 0.0)
            return Cost(4 * act, 0.0)  # + the transposed shift of g
        return None
    if kernel.startswith("csc_block"):
        m = mid or c
        hid = pix * m * element_size
        weights = 2 * c * m * element_size
        gemms = 2.0 * pix * c * m * 2
        if metric == "fwd":  # conv1 reads x, writes h; the fused tail reads h and x, writes out
            return Cost(act + hid + hid + act + act + weights, gemms)
        if metric == "fwd+bwd":
            # every GEMM reads its operands and writes its result once, every elementwise op
            # (BN, ReLU, add) fused into one: fwd as above plus BN2's input; bwd: the tail's
            # dgrad (g -> dh) and wgrad (h, g), conv1's dgrad (dh -> dx) and wgrad (x, dh).
            fwd = act + hid + hid + act + act
            bwd = (act + hid) + (hid + act) + (hid + act) + (act + hid) + act
            return Cost(fwd + bwd + 3 * weights, 3 * gemms)
        return None
    return None


GPU_SHAPES = [(256, 64, 32, 32), (64, 128, 56, 56), (64, 512, 14, 14)]


def floor_table(rates: Rates, element_size: int = 2) -> str:
    """A markdown table of the floors of every GPU benchmark operation at `rates`."""
    rows = ["| operation | shape | MB moved | GFLOP | bytes floor (us) | FLOP floor (us) | floor (us) |",
            "|---|---|---:|---:|---:|---:|---:|"]
    ops = [("shift", "fwd"), ("shift", "fwd+bwd"), ("shift_conv1x1", "fwd"), ("shift_conv1x1", "fwd+bwd"),
           ("csc_block", "fwd"), ("csc_block", "fwd+bwd"), ("active_shift", "fwd"),
           ("active_shift", "fwd+bwd")]
    peak = rates.flops32 if element_size == 4 else rates.flops16
    for kernel, metric in ops:
        for shape in GPU_SHAPES:
            cst = cost(kernel, metric, shape, element_size)
            b_us, f_us = 1e6 * cst.nbytes / rates.bandwidth, 1e6 * cst.flops / peak
            rows.append(f"| {kernel} {metric} | {'x'.join(map(str, shape))} | {cst.nbytes / 1e6:.1f} | "
                        f"{cst.flops / 1e9:.2f} | {b_us:.1f} | {f_us:.1f} | {max(b_us, f_us):.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="H200", choices=list(NOMINAL))
    parser.add_argument("--element-size", type=int, default=2, choices=[2, 4])
    args = parser.parse_args(argv)
    rates = rates_for(args.gpu)
    print(f"Nominal {rates.name}: {rates.bandwidth / 1e12:.2f} TB/s, "
          f"{(rates.flops32 if args.element_size == 4 else rates.flops16) / 1e12:.0f} TFLOP/s dense "
          f"({'tf32' if args.element_size == 4 else 'bf16'}).\n")
    print(floor_table(rates, args.element_size))


if __name__ == "__main__":
    main()
