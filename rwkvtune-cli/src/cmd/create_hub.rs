use anyhow::Result;
use clap::Args;
use rwkvtune_core::hub::{create_hub, CreateHubOptions, WeightFormat};
use std::path::PathBuf;

/// The flags of the Python `rwkvtune-create-hub`, plus `--vocab-file` and `--seed`.
#[derive(Debug, Args)]
pub struct CreateHubArgs {
    /// Target directory.
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Weights (.pth or .safetensors). Omit to initialise a fresh model from --config-name.
    #[arg(long)]
    pub model_file: Option<PathBuf>,
    /// Predefined config (rwkv7-0.1b ... rwkv7-13.3b, or short names like 1.5b) or a JSON file.
    #[arg(long)]
    pub config_name: Option<String>,
    #[arg(long)]
    pub n_layer: Option<usize>,
    #[arg(long)]
    pub n_embd: Option<usize>,
    #[arg(long)]
    pub vocab_size: Option<usize>,
    #[arg(long)]
    pub head_size_a: Option<usize>,
    #[arg(long)]
    pub ctx_len: Option<usize>,
    #[arg(long)]
    pub dim_att_lora: Option<usize>,
    #[arg(long)]
    pub dim_gate_lora: Option<usize>,
    #[arg(long)]
    pub dim_mv_lora: Option<usize>,
    /// Vocabulary file copied as vocab.txt (default: the built-in RWKV World vocabulary).
    #[arg(long)]
    pub vocab_file: Option<PathBuf>,
    /// A .jinja chat template stored in tokenizer_config.json.
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    #[arg(long)]
    pub model_name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0.85)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    #[arg(long, default_value = "\n\n")]
    pub eos_token: String,
    #[arg(long, default_value_t = 4096)]
    pub model_max_length: usize,
    /// Accepted for compatibility: weights are copied unless --link-weights is given.
    #[arg(long)]
    pub copy_weights: bool,
    /// Symlink the weight file (absolute path) instead of copying it.
    #[arg(long)]
    pub link_weights: bool,
    #[arg(long, default_value = "pth", value_parser = ["pth", "safetensors"])]
    pub save_format: String,
    /// Write into an existing directory (files are replaced, nothing is deleted).
    #[arg(long)]
    pub overwrite: bool,
    /// Print the resolved options.
    #[arg(long)]
    pub verbose: bool,
    /// Seed of a fresh initialisation (no --model-file).
    #[arg(long, default_value_t = 42)]
    pub seed: i64,
}

pub fn options(a: &CreateHubArgs) -> Result<CreateHubOptions> {
    let mut o = CreateHubOptions::new(&a.output_dir);
    o.model_file = a.model_file.clone();
    o.config_name = a.config_name.clone();
    o.n_layer = a.n_layer;
    o.n_embd = a.n_embd;
    o.vocab_size = a.vocab_size;
    o.head_size_a = a.head_size_a;
    o.ctx_len = a.ctx_len;
    o.dim_att_lora = a.dim_att_lora;
    o.dim_gate_lora = a.dim_gate_lora;
    o.dim_mv_lora = a.dim_mv_lora;
    o.vocab_file = a.vocab_file.clone();
    o.chat_template = a.chat_template.clone();
    o.model_name = a.model_name.clone();
    o.description = a.description.clone();
    o.temperature = a.temperature;
    o.top_p = a.top_p;
    o.top_k = a.top_k;
    o.repetition_penalty = a.repetition_penalty;
    o.max_length = a.max_length;
    o.eos_token = a.eos_token.clone();
    o.model_max_length = a.model_max_length;
    o.link_weights = a.link_weights;
    o.save_format = WeightFormat::parse(&a.save_format)?;
    o.overwrite = a.overwrite;
    o.seed = a.seed;
    Ok(o)
}

pub fn run(a: CreateHubArgs) -> Result<()> {
    let opts = options(&a)?;
    if a.verbose {
        eprintln!("{opts:#?}");
    }
    let hub = create_hub(&opts)?;
    println!(
        "created {} ({} layers, n_embd {}, vocab {}, {:.2} M parameters)",
        hub.dir.display(),
        hub.config.n_layer,
        hub.config.n_embd,
        hub.config.vocab_size,
        hub.parameters as f64 / 1e6
    );
    Ok(())
}
