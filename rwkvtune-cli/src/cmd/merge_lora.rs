//! `rwkvtune merge-lora` (and the stand-alone `rwkvtune-merge-lora`): fold a LoRA adapter into its
//! base model and write a plain model directory.

use anyhow::{Context, Result};
use clap::Args;
use rwkvtune_core::hub::{parse_device, parse_kind, WeightFormat};
use rwkvtune_core::lora::{merge_lora, MergeOptions};
use std::path::PathBuf;

/// The flags of the Python `rwkvtune-merge-lora`.
#[derive(Debug, Args)]
pub struct MergeLoraArgs {
    /// Base model directory (config.json + model.pth / model.safetensors).
    #[arg(long, short = 'b')]
    pub base_model: PathBuf,
    /// Adapter directory (adapter_config.json + adapter_model.safetensors / adapter_model.bin).
    #[arg(long, short = 'l')]
    pub lora_model: PathBuf,
    /// Output directory (must not exist or be empty).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Device the merge runs on.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub device: String,
    /// dtype of the saved weights (the merge itself is computed in fp32).
    #[arg(long, default_value = "bf16", value_parser = ["fp32", "fp16", "bf16"])]
    pub precision: String,
    #[arg(long, default_value = "pth", value_parser = ["pth", "safetensors"])]
    pub save_format: String,
}

pub fn run(a: MergeLoraArgs) -> Result<()> {
    let opts = MergeOptions {
        base_model: a.base_model.clone(),
        lora_model: a.lora_model.clone(),
        output: a.output.clone(),
        device: parse_device(&a.device)?,
        precision: parse_kind(&a.precision)?,
        save_format: WeightFormat::parse(&a.save_format)?,
    };
    let report = merge_lora(&opts).with_context(|| {
        format!(
            "merging adapter {} into {}",
            a.lora_model.display(),
            a.base_model.display()
        )
    })?;
    println!(
        "merged {} LoRA layers ({} full tensors from the adapter) into {} ({})",
        report.merged_layers,
        report.replaced_tensors,
        report.weights.display(),
        a.precision
    );
    Ok(())
}
