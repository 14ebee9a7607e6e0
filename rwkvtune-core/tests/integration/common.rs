use std::collections::HashMap;
use std::path::PathBuf;
use tch::Tensor;

/// `../shared/reference`; its absence is a failure, never a silent skip.
pub fn reference() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference");
    assert!(
        p.is_dir(),
        "reference cases not found at {} (CI lays ../shared beside the checkout)",
        p.display()
    );
    p
}

pub fn model_dir(name: &str) -> PathBuf {
    reference().join("models").join(name)
}

pub fn load_case(rel: &str) -> HashMap<String, Tensor> {
    let path = reference().join(rel);
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

pub fn ids_of(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.flatten(0, -1)).unwrap()
}

/// max over elements of |cand - ref| - (atol + rtol |ref|); <= 0 means within tolerance.
pub fn excess(cand: &Tensor, reference: &Tensor, atol: f64, rtol: f64) -> f64 {
    let c = cand.to_kind(tch::Kind::Double);
    let r = reference.to_kind(tch::Kind::Double);
    ((&c - &r).abs() - (r.abs() * rtol + atol))
        .max()
        .double_value(&[])
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}
