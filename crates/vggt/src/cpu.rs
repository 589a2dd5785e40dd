//! The transformer blocks' Linear layers and attention, and the DPT heads' convolutions, on the
//! CPU backend through `cpu-kernels`: matrix products in a CBLAS library when one is installed
//! (OpenBLAS, MKL), attention as tiled score blocks with an exact softmax, convolutions as
//! unfolded patches times weights. Linear layers and attention are ~93 % of a VGGT block on the
//! CPU, convolutions most of a DPT head (see `bench/RESULTS.md`).
//!
//! [`linear`], [`attention`] and [`conv2d`] take tensors of any backend. On burn's CPU backend (Flex) with
//! f32 data they read the tensors' storage in place and run the kernels; any other backend or
//! dtype (CUDA, bf16 on the CPU) runs burn's own op, so model code calls these unconditionally.

use std::any::{Any, TypeId};

use burn::backend::Flex;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{backend::Backend, DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;

/// One line naming what runs the CPU backend's matrix products (a BLAS library and its build,
/// or the portable fallback and why), for logs.
pub fn matmul_provider() -> String {
    cpu_kernels::provider().description()
}

/// Whether the CPU backend's matrix products run in a BLAS library (else the slower portable
/// `gemm` crate).
pub fn uses_blas() -> bool {
    matches!(cpu_kernels::provider(), cpu_kernels::Provider::Blas(_))
}

/// Whether tensors of backend `B` and dtype `dtype` run on the kernels of this module.
fn handled<B: Backend>(dtype: DType) -> bool {
    TypeId::of::<B>() == TypeId::of::<Flex>() && dtype == DType::F32
}

/// The same tensor seen as a Flex tensor. Only called when `B` is Flex.
fn into_flex<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<Flex, D> {
    let boxed: Box<dyn Any> = Box::new(x);
    *boxed
        .downcast::<Tensor<Flex, D>>()
        .unwrap_or_else(|_| unreachable!("the backend was checked to be Flex"))
}

/// The inverse of [`into_flex`].
fn from_flex<B: Backend, const D: usize>(x: Tensor<Flex, D>) -> Tensor<B, D> {
    let boxed: Box<dyn Any> = Box::new(x);
    *boxed
        .downcast::<Tensor<B, D>>()
        .unwrap_or_else(|_| unreachable!("the backend was checked to be Flex"))
}

/// Storage of an f32 Flex tensor in row-major order (copied only when it is a strided view).
fn storage<const D: usize>(x: Tensor<Flex, D>) -> FlexTensor {
    let tensor = x.into_primitive().tensor();
    if tensor.is_contiguous() {
        tensor
    } else {
        tensor.to_contiguous()
    }
}

/// The row-major values of a contiguous f32 Flex tensor.
fn values(tensor: &FlexTensor) -> &[f32] {
    let start = tensor.layout().start_offset();
    &tensor.storage::<f32>()[start..start + tensor.layout().num_elements()]
}

/// An f32 tensor of `shape` owning `values` (no copy; f32 whatever burn's default float dtype).
fn tensor_from<B: Backend, const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
    let primitive = FlexTensor::from_data(TensorData::new(values, shape));
    from_flex(Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(
        primitive,
    )))
}

/// `layer.forward(x)`: x `[..., d_in]` -> `[..., d_out]`.
pub fn linear<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let weight = layer.weight.val();
    if !handled::<B>(x.dtype()) || weight.dtype() != DType::F32 {
        return layer.forward(x);
    }
    let mut shape = x.dims();
    let [d_in, d_out] = weight.dims();
    let rows = shape[..D - 1].iter().product::<usize>();

    let weight = into_flex(weight).into_primitive().tensor();
    // burn keeps weights as [d_in, d_out]; a transposed view of PyTorch's [d_out, d_in] is
    // used as it is.
    let (weight, transposed) = match weight.layout().strides() {
        [_, 1] if weight.is_contiguous() => (weight, false),
        [1, s] if *s as usize == d_in => (weight, true),
        _ => (weight.to_contiguous(), false),
    };
    let bias = layer
        .bias
        .as_ref()
        .map(|bias| storage(into_flex(bias.val())));
    let x = storage(into_flex(x));
    let out = cpu_kernels::linear(
        values(&x),
        (rows, d_in, d_out),
        values(&weight),
        transposed,
        bias.as_ref().map(values),
    );
    shape[D - 1] = d_out;
    tensor_from(out, shape)
}

/// burn's `gelu(x)` (exact erf form); on the CPU kernels erf is good to 1.5e-7 absolute, as in
/// PyTorch's vectorised CPU erf.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if !handled::<B>(x.dtype()) {
        return burn::tensor::activation::gelu(x);
    }
    // Contiguous, and in place when nothing else shares the storage (a fresh Linear output).
    let mut tensor = storage(into_flex(x));
    let start = tensor.layout().start_offset();
    let count = tensor.layout().num_elements();
    cpu_kernels::gelu(&mut tensor.storage_mut::<f32>()[start..start + count]);
    from_flex(Tensor::from_primitive(TensorPrimitive::Float(tensor)))
}

/// `layer.forward(x)` for x `[N, C_in, H, W]`. The CPU kernels take groups 1, dilation 1 and
/// symmetric explicit padding (every convolution of VGGT); anything else runs burn's op.
pub fn conv2d<B: Backend>(layer: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let weight = layer.weight.val();
    let padding = match layer.padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some([top, left])
        }
        _ => None,
    };
    let simple = layer.groups == 1 && layer.dilation == [1, 1];
    let (Some(padding), true) = (padding, simple) else {
        return layer.forward(x);
    };
    if !handled::<B>(x.dtype()) || weight.dtype() != DType::F32 {
        return layer.forward(x);
    }
    let [batch, in_channels, height, width] = x.dims();
    let [out_channels, _, kh, kw] = weight.dims();
    let shape = cpu_kernels::conv::Conv2d {
        batch,
        in_channels,
        input: [height, width],
        out_channels,
        kernel: [kh, kw],
        stride: layer.stride,
        padding,
    };
    let [out_h, out_w] = shape.output();
    let weight = storage(into_flex(weight));
    let bias = layer
        .bias
        .as_ref()
        .map(|bias| storage(into_flex(bias.val())));
    let x = storage(into_flex(x));
    let out = cpu_kernels::conv::conv2d(
        values(&x),
        &shape,
        values(&weight),
        bias.as_ref().map(values),
    );
    tensor_from(out, [batch, out_channels, out_h, out_w])
}

/// Bilinear resize with `align_corners = true` of x `[N, C, h, w]` to `out_hw` on the CPU
/// kernels, or `None` (x untouched) for another backend or dtype.
pub fn resize_bilinear_align_corners<B: Backend>(
    x: &Tensor<B, 4>,
    out_hw: [usize; 2],
) -> Option<Tensor<B, 4>> {
    if !handled::<B>(x.dtype()) {
        return None;
    }
    let [n, channels, h, w] = x.dims();
    if h == 0 || w == 0 {
        return None;
    }
    let x = storage(into_flex(x.clone()));
    let out = cpu_kernels::resize::resize_bilinear_align_corners(
        values(&x),
        n * channels,
        [h, w],
        out_hw,
    );
    Some(tensor_from(out, [n, channels, out_hw[0], out_hw[1]]))
}

/// `softmax(q k^T / sqrt(hd)) v` for q `[N, H, Lq, hd]`, k and v `[N, H, Lk, hd]`; returns
/// `[N, H, Lq, hd]`. Memory beyond the output is one tile of scores per thread on the CPU
/// kernels; burn's op elsewhere (see [`crate::layers::MAX_SCORE_ELEMENTS`] for its bound).
pub fn attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    if !runs_attention_natively::<B>(&q, &k, &v) {
        return burn_attention(q, k, v, None, None, AttentionModuleOptions::default());
    }
    let [n, heads, lq, head_dim] = q.dims();
    let lk = k.dims()[2];
    let (q, k, v) = (
        storage(into_flex(q)),
        storage(into_flex(k)),
        storage(into_flex(v)),
    );
    let out = cpu_kernels::attention(
        values(&q),
        values(&k),
        values(&v),
        (n * heads, lq, lk, head_dim),
        1.0 / (head_dim as f32).sqrt(),
    );
    tensor_from(out, [n, heads, lq, head_dim])
}

/// Sparse global attention for q, k, v `[N, H, S*P, hd]` (frame-major): the queries of frame i
/// attend the tokens of the frames `neighbours[i]` only, streamed through the tiled kernel
/// without gathering them ([`cpu_kernels::frame_sparse_attention`]). Returns `[N, H, S*P, hd]`.
/// Callers check [`runs_attention_natively`] first; other backends gather (see
/// [`crate::layers::Attention::forward_sparse`]).
pub fn frame_sparse_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    frames: usize,
    neighbours: &[Vec<usize>],
) -> Tensor<B, 4> {
    assert!(
        runs_attention_natively::<B>(&q, &k, &v),
        "frame_sparse_attention needs f32 tensors of the CPU backend"
    );
    let [n, heads, l, head_dim] = q.dims();
    let (q, k, v) = (
        storage(into_flex(q)),
        storage(into_flex(k)),
        storage(into_flex(v)),
    );
    let out = cpu_kernels::frame_sparse_attention(
        values(&q),
        values(&k),
        values(&v),
        (n * heads, frames, l / frames, head_dim),
        neighbours,
        1.0 / (head_dim as f32).sqrt(),
    );
    tensor_from(out, [n, heads, l, head_dim])
}

/// Whether [`attention`] runs these tensors on the CPU kernels (which bound their own memory,
/// so callers need not slice the query axis).
pub fn runs_attention_natively<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
) -> bool {
    handled::<B>(q.dtype()) && k.dtype() == DType::F32 && v.dtype() == DType::F32 && k.dims()[2] > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::tensor::Distribution;

    fn max_abs_diff<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn linear_equals_burns_linear_for_plain_and_transposed_weights() {
        let device = Default::default();
        let layer: Linear<Flex> = LinearConfig::new(48, 80).init(&device);
        let x = Tensor::<Flex, 3>::random([2, 37, 48], Distribution::Default, &device);
        let want = layer.forward(x.clone());
        assert!(max_abs_diff(linear(&layer, x.clone()), want.clone()) < 1e-5);

        // The same weights as a transposed view of a [d_out, d_in] tensor (PyTorch's layout).
        let pytorch_layout = layer.weight.val().transpose().into_data();
        let mut transposed = layer.clone();
        transposed.weight = transposed
            .weight
            .map(|_| Tensor::<Flex, 2>::from_data(pytorch_layout, &device).transpose());
        assert!(max_abs_diff(linear(&transposed, x.clone()), want.clone()) < 1e-5);

        // A strided input view is read correctly too.
        let wide = Tensor::<Flex, 3>::random([2, 37, 96], Distribution::Default, &device);
        let view = wide.narrow(2, 16, 48);
        assert!(max_abs_diff(linear(&layer, view.clone()), layer.forward(view)) < 1e-5);
    }

    #[test]
    fn linear_without_bias_and_in_bf16_follows_burn() {
        let device = Default::default();
        let layer: Linear<Flex> = LinearConfig::new(16, 8).with_bias(false).init(&device);
        let x = Tensor::<Flex, 2>::random([5, 16], Distribution::Default, &device);
        assert!(max_abs_diff(linear(&layer, x.clone()), layer.forward(x.clone())) < 1e-6);
        let mut half = layer.clone();
        half.weight = half.weight.map(|w| w.cast(DType::BF16));
        let got = linear(&half, x.clone().cast(DType::BF16));
        let want = half.forward(x.cast(DType::BF16));
        assert!(max_abs_diff(got.clone().cast(DType::F32), want.cast(DType::F32)) == 0.0);
        assert_eq!(got.dtype(), DType::BF16);
    }

    #[test]
    fn gelu_follows_burn_and_leaves_shared_storage_alone() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::random([37, 300], Distribution::Normal(0.0, 3.0), &device);
        let want = burn::tensor::activation::gelu(x.clone());
        let before = x.clone().into_data();
        // `x` still shares its storage with the argument: the kernel must not write through.
        let got = gelu(x.clone());
        assert!(max_abs_diff(got, want) < 1e-6);
        assert_eq!(x.into_data(), before);
        // A strided view.
        let wide = Tensor::<Flex, 2>::random([8, 40], Distribution::Default, &device);
        let view = wide.narrow(1, 3, 20);
        let want = burn::tensor::activation::gelu(view.clone());
        assert!(max_abs_diff(gelu(view), want) < 1e-6);
    }

    #[test]
    fn bilinear_resize_follows_burns_interpolate() {
        use burn::tensor::module::interpolate;
        use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
        let device = Default::default();
        let x = Tensor::<Flex, 4>::random([2, 3, 7, 11], Distribution::Default, &device);
        for out_hw in [[14, 22], [15, 9], [1, 5], [28, 44]] {
            let options =
                InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(true);
            let want = interpolate(x.clone(), out_hw, options);
            let got = resize_bilinear_align_corners(&x, out_hw).expect("f32 on the CPU");
            assert!(max_abs_diff(got, want) < 1e-6, "{out_hw:?}");
        }
    }

    #[test]
    fn conv2d_equals_burns_conv2d() {
        use burn::nn::conv::Conv2dConfig;
        let device = Default::default();
        let x = Tensor::<Flex, 4>::random([2, 6, 13, 17], Distribution::Default, &device);
        let configs = [
            Conv2dConfig::new([6, 10], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
            Conv2dConfig::new([6, 4], [1, 1]),
            Conv2dConfig::new([6, 5], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false),
        ];
        for config in configs {
            let layer = config.init::<Flex>(&device);
            let want = layer.forward(x.clone());
            let got = conv2d(&layer, x.clone());
            assert_eq!(got.dims(), want.dims());
            assert!(max_abs_diff(got, want) < 1e-5, "{config:?}");
        }
    }

    #[test]
    fn attention_equals_burns_attention_op() {
        let device = Default::default();
        for &(lq, lk) in &[(40, 40), (300, 700), (3, 1)] {
            let q = Tensor::<Flex, 4>::random([2, 3, lq, 16], Distribution::Default, &device) * 3.0;
            let k = Tensor::<Flex, 4>::random([2, 3, lk, 16], Distribution::Default, &device);
            let v = Tensor::<Flex, 4>::random([2, 3, lk, 16], Distribution::Default, &device);
            let options = AttentionModuleOptions::default();
            let want = burn_attention(q.clone(), k.clone(), v.clone(), None, None, options);
            let got = attention(q, k, v);
            assert!(max_abs_diff(got, want) < 2e-6, "lq {lq} lk {lk}");
        }
    }
}
