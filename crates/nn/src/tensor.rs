//! A minimal dense tensor of `f64` (row-major), for weights and cleartext activations.

use crate::NnError;

/// A dense row-major tensor. Deserialization checks the element count as [`Tensor::new`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RawTensor")]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f64>,
}

/// A tensor as serialized, before its element count is checked.
#[derive(serde::Deserialize)]
struct RawTensor {
    shape: Vec<usize>,
    data: Vec<f64>,
}

impl TryFrom<RawTensor> for Tensor {
    type Error = NnError;
    fn try_from(raw: RawTensor) -> Result<Self, NnError> {
        Self::new(raw.shape, raw.data)
    }
}

impl Tensor {
    /// A tensor from its shape and data.
    ///
    /// # Errors
    /// [`NnError::Shape`] if the element count does not match the shape.
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Result<Self, NnError> {
        let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if count != Some(data.len()) {
            return Err(NnError::Shape(format!(
                "shape {shape:?} does not hold the {} values given",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }

    /// All zeros.
    pub fn zeros(shape: Vec<usize>) -> Self {
        let count = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; count],
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values.
    pub fn data(&self) -> &[f64] {
        &self.data
    }

    /// The values, mutably.
    pub fn data_mut(&mut self) -> &mut [f64] {
        &mut self.data
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor is empty.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The same values with another shape of equal size.
    ///
    /// # Errors
    /// [`NnError::Shape`] on a size mismatch.
    pub fn reshaped(self, shape: Vec<usize>) -> Result<Self, NnError> {
        Self::new(shape, self.data)
    }

    /// Index of the largest value (first on ties).
    pub fn argmax(&self) -> usize {
        crate::exec::argmax(&self.data)
    }
}
