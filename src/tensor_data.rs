//! What a checkpoint writes: candle tensors, or host F32 buffers written
//! in place, both as safetensors views.

use candle_core::Tensor;

/// A tensor to write: a candle tensor, or F32 values in host memory (the
/// optimizer's moments), written without being copied.
pub enum TensorData<'a> {
    /// A candle tensor on any device (copied to the CPU to be written).
    Tensor(Tensor),
    /// Host F32 values of the given shape.
    HostF32 {
        /// Row-major values.
        values: &'a [f32],
        /// Their shape.
        shape: Vec<usize>,
    },
}

impl safetensors::View for &TensorData<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self {
            TensorData::Tensor(t) => safetensors::View::dtype(t),
            TensorData::HostF32 { .. } => safetensors::Dtype::F32,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            TensorData::Tensor(t) => t.dims(),
            TensorData::HostF32 { shape, .. } => shape,
        }
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            TensorData::Tensor(t) => safetensors::View::data(t),
            TensorData::HostF32 { values, .. } => {
                if cfg!(target_endian = "little") {
                    // SAFETY: f32 has no padding and any byte is a valid u8;
                    // on a little-endian machine its in-memory bytes are the
                    // little-endian encoding safetensors stores.
                    let raw = unsafe {
                        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), values.len() * 4)
                    };
                    std::borrow::Cow::Borrowed(raw)
                } else {
                    std::borrow::Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
                }
            }
        }
    }

    fn data_len(&self) -> usize {
        match self {
            TensorData::Tensor(t) => safetensors::View::data_len(t),
            TensorData::HostF32 { values, .. } => values.len() * 4,
        }
    }
}
