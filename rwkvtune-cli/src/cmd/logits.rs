use super::{non_empty, parse_ids};
use anyhow::{Context, Result};
use clap::Args;
use rwkvtune_core::hub::{parse_device, parse_kind, AutoModel};
use std::path::PathBuf;
use tch::{Kind, Tensor};

#[derive(Debug, Args)]
pub struct LogitsArgs {
    /// Model directory (config.json + model.pth or model.safetensors) or weight file.
    #[arg(long)]
    pub model: PathBuf,
    /// Token ids: `1,2,3` or `@FILE` holding a JSON array.
    #[arg(long)]
    pub input_ids: String,
    /// Output `.npy` file: float32 logits [T, V].
    #[arg(long)]
    pub output: PathBuf,
    /// Feed the ids one at a time through the recurrent (stateful) path.
    #[arg(long)]
    pub stateful: bool,
    /// Weights and activations dtype: fp32, bf16 or fp16.
    #[arg(long, default_value = "fp32")]
    pub dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: LogitsArgs) -> Result<()> {
    let ids = non_empty(parse_ids(&a.input_ids)?)?;
    let model =
        AutoModel::from_pretrained(&a.model, parse_device(&a.device)?, parse_kind(&a.dtype)?)
            .with_context(|| format!("loading model {}", a.model.display()))?;
    let _guard = tch::no_grad_guard();
    let logits = if a.stateful {
        let mut state = None;
        let mut rows = Vec::with_capacity(ids.len());
        for &id in &ids {
            let (l, s) = model.forward(
                &Tensor::from_slice(&[id]).view([1, 1]),
                state.as_ref(),
                None,
            )?;
            rows.push(l.view([1, -1]));
            state = Some(s);
        }
        Tensor::cat(&rows, 0)
    } else {
        model
            .forward(&Tensor::from_slice(&ids).unsqueeze(0), None, None)?
            .0
            .squeeze_dim(0)
    };
    let logits = logits
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu)
        .contiguous();
    let (t, v) = logits.size2()?;
    let mut data = vec![0f32; (t * v) as usize];
    logits.f_copy_data(&mut data, (t * v) as usize)?;
    crate::npy::write_f32(&a.output, &[t as usize, v as usize], &data)
        .with_context(|| format!("writing {}", a.output.display()))?;
    Ok(())
}
