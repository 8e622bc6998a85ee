//! ONNX import and export.

mod export;
mod import;
pub mod proto;

pub use export::{export_onnx, graph_to_onnx};
pub use import::{
    MAX_ONNX_BYTES, MAX_ONNX_NODES, MAX_POLY_DEGREE, OPSET_RANGE, SUPPORTED, import_onnx,
    import_onnx_file,
};
