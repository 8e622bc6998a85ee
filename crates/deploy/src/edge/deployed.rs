//! A deployment loaded at the edge: the protected model, the evaluator with the owner's
//! evaluation keys, and the public key. Built only from a [`DeploymentBundle`], which holds
//! public material only: nothing here can hold a secret key.

use std::sync::Arc;

use hecnn_ckks::Evaluator;
use hecnn_nn::Tensor;
use hecnn_nn::protect::{FeatureInput, MAX_EDGE_KEYS, ProtectedModel};
use hecnn_ring::{Backend, Prng};
use hecnn_rlwe::{EvaluationKeys, PublicKey};

use crate::DeployError;
use crate::wire::{DeploymentBundle, DeploymentHeader, ResultEnvelope, ResultHeader};

/// A loaded deployment.
pub struct Deployed<B: Backend> {
    header: DeploymentHeader,
    model: ProtectedModel<B>,
    eval: Evaluator<B>,
    pk: PublicKey<B>,
    shape: [usize; 3],
}

impl<B: Backend + Clone> Deployed<B> {
    /// Checks and loads a bundle: the protected model signed by `owner` (checked before
    /// anything of it is parsed), keys of the same owner key and parameters as the header
    /// says.
    ///
    /// # Errors
    /// [`DeployError::Signature`] for a model `owner` did not sign; malformed or mismatched
    /// payloads.
    pub fn load(
        be: &B,
        bundle: &DeploymentBundle,
        owner: &crate::signing::OwnerKey,
    ) -> Result<Self, DeployError> {
        let h = &bundle.header;
        let model = crate::signing::verify_model(&bundle.protected, owner)?;
        let model = ProtectedModel::from_bytes(be, model)?;
        let params = Arc::clone(model.params());
        let evk = EvaluationKeys::from_bytes(be, params.rlwe(), &bundle.eval_keys, MAX_EDGE_KEYS)?;
        let pk = PublicKey::from_bytes(be, params.rlwe(), &bundle.public_key)?;
        for (what, id) in [
            ("protected model", model.key_id()),
            ("evaluation keys", evk.key_id()),
            ("public key", pk.key_id()),
        ] {
            if id != h.key_id {
                return Err(DeployError::Wire(format!(
                    "the bundle's {what} is under another owner key than its header names"
                )));
            }
        }
        let shape: [usize; 3] = model
            .spec()
            .prefix
            .input_shape
            .as_slice()
            .try_into()
            .map_err(|_| DeployError::Wire("the model's input is not C×H×W".into()))?;
        let eval = Evaluator::new(params, Arc::new(evk), be.clone())?;
        Ok(Self {
            header: h.clone(),
            model,
            eval,
            pk,
            shape,
        })
    }

    /// What this deployment is.
    pub fn header(&self) -> &DeploymentHeader {
        &self.header
    }

    /// The input shape, C×H×W.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Pixels per input (C·H·W).
    pub fn pixels(&self) -> usize {
        self.shape.iter().product()
    }

    /// Classifies one image of 8-bit pixels (C×H×W order, scaled to [0, 1] as the data
    /// loaders do): cleartext features, encrypted with the owner's public key when the
    /// deployment says so, the protected layers, and the encrypted result as an envelope.
    ///
    /// # Errors
    /// A wrong number of pixels; evaluation failures.
    pub fn infer(&self, input_id: &str, pixels: &[u8]) -> Result<Vec<u8>, DeployError> {
        if pixels.len() != self.pixels() {
            return Err(DeployError::Wire(format!(
                "{input_id}: {} pixels, the model takes {:?} = {}",
                pixels.len(),
                self.shape,
                self.pixels()
            )));
        }
        let data = pixels
            .iter()
            .map(|&p| f64::from(f32::from(p) / 255.0))
            .collect();
        let image = Tensor::new(self.shape.to_vec(), data)?;
        let features = self.model.spec().features_of(&image)?;
        let input = if self.header.encrypt_features {
            let mut rng = Prng::from_entropy()?;
            FeatureInput::Encrypted(
                self.model
                    .encrypt_features(&self.eval, &self.pk, &features, &mut rng)?,
            )
        } else {
            FeatureInput::Plain(features)
        };
        let out = self.model.evaluate(&self.eval, &input)?;
        let output = out.to_bytes(
            self.eval.backend(),
            self.model.params(),
            self.model.key_id(),
        )?;
        ResultEnvelope {
            header: ResultHeader {
                deployment_id: self.header.deployment_id,
                model_id: self.header.model_id,
                model_version: self.header.model_version,
                input_id: input_id.to_string(),
            },
            output,
        }
        .to_bytes()
    }
}

/// Decodes an image file for a model of input shape `shape`: a PNG (8-bit grey, RGB or
/// RGBA, alpha dropped) of the model's size, or raw `.u8` bytes in C×H×W order.
///
/// # Errors
/// [`DeployError::Wire`] for other formats, bit depths and sizes.
pub fn decode_image(name: &str, bytes: &[u8], shape: [usize; 3]) -> Result<Vec<u8>, DeployError> {
    let [c, h, w] = shape;
    let bad = |m: String| DeployError::Wire(format!("{name}: {m}"));
    if name.ends_with(".u8") {
        if bytes.len() != c * h * w {
            return Err(bad(format!(
                "{} bytes, the model takes {c}×{h}×{w}",
                bytes.len()
            )));
        }
        return Ok(bytes.to_vec());
    }
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().map_err(|e| bad(format!("PNG: {e}")))?;
    // Check the declared size before allocating: a tiny file may claim a huge image.
    let (width, height) = reader.info().size();
    if (height as usize, width as usize) != (h, w) {
        return Err(bad(format!(
            "{width}×{height} PNG, the model takes {w}×{h}"
        )));
    }
    let mut buf = vec![
        0;
        reader
            .output_buffer_size()
            .ok_or_else(|| bad("PNG too large".into()))?
    ];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(format!("PNG: {e}")))?;
    if info.bit_depth != png::BitDepth::Eight {
        return Err(bad(format!("{:?}-bit PNG; 8-bit expected", info.bit_depth)));
    }
    if (info.height as usize, info.width as usize) != (h, w) {
        return Err(bad(format!(
            "{}×{} PNG, the model takes {h}×{w}",
            info.width, info.height
        )));
    }
    let stride = match (info.color_type, c) {
        (png::ColorType::Grayscale, 1) => 1,
        (png::ColorType::Rgb, 3) => 3,
        (png::ColorType::Rgba, 3) => 4,
        (t, _) => return Err(bad(format!("{t:?} PNG for a model of {c} channels"))),
    };
    let px = &buf[..info.buffer_size()];
    let mut out = vec![0u8; c * h * w];
    for (i, pixel) in px.chunks_exact(stride).enumerate().take(h * w) {
        for ch in 0..c {
            out[ch * h * w + i] = pixel[ch];
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_decode_in_channel_major_order() {
        let rgb: Vec<u8> = (0..2 * 3 * 3).map(|i| i as u8).collect();
        let mut png_bytes = Vec::new();
        {
            let mut e = png::Encoder::new(&mut png_bytes, 3, 2);
            e.set_color(png::ColorType::Rgb);
            e.set_depth(png::BitDepth::Eight);
            e.write_header().unwrap().write_image_data(&rgb).unwrap();
        }
        let chw = decode_image("a.png", &png_bytes, [3, 2, 3]).unwrap();
        assert_eq!(&chw[..6], &[0, 3, 6, 9, 12, 15]);
        assert_eq!(&chw[6..12], &[1, 4, 7, 10, 13, 16]);
        assert!(decode_image("a.png", &png_bytes, [1, 2, 3]).is_err());
        assert!(decode_image("a.png", &png_bytes, [3, 3, 3]).is_err());
        assert!(decode_image("a.png", b"not a png", [3, 2, 3]).is_err());
        assert_eq!(
            decode_image("a.u8", &[1, 2], [1, 1, 2]).unwrap(),
            vec![1, 2]
        );
        assert!(decode_image("a.u8", &[1, 2, 3], [1, 1, 2]).is_err());
    }
}
