//! A deliberately misbehaving reward plugin for the host's sandbox tests. Config
//! `{"mode": "..."}` picks the misbehaviour: ok, trap, trap-on-boom, loop, oom, wrong-count, nan,
//! inf, error, escape, stateful, print, bad-init, host-calls.

use rwkvtune_wit::{
    detokenize, export_reward, info, tokenize, PluginInfo, RewardBatch, RewardPlugin, Value,
};

struct Hostile {
    mode: String,
    calls: u32,
}

impl RewardPlugin for Hostile {
    fn new(config: &Value) -> Result<Self, String> {
        let mode = config
            .get("mode")
            .and_then(Value::as_str)
            .unwrap_or("ok")
            .to_string();
        if mode == "bad-init" {
            return Err("bad-init mode: refusing to start".into());
        }
        Ok(Hostile { mode, calls: 0 })
    }

    fn info(&self) -> PluginInfo {
        PluginInfo::new("hostile", "0.0.1", "misbehaves on purpose")
    }

    fn rewards(&mut self, batch: &RewardBatch) -> Result<Vec<Option<f32>>, String> {
        self.calls += 1;
        let n = batch.len();
        match self.mode.as_str() {
            "ok" => Ok(vec![Some(1.0); n]),
            "trap" => panic!("hostile plugin panics on purpose"),
            "trap-on-boom" => {
                if batch.prompts.iter().any(|p| p == "boom") {
                    panic!("boom prompt");
                }
                Ok(vec![Some(1.0); n])
            }
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "oom" => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                loop {
                    hog.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hog);
                }
            }
            "wrong-count" => Ok(vec![Some(1.0); n.saturating_sub(1)]),
            "nan" => Ok((0..n)
                .map(|i| Some(if i == 1 { f32::NAN } else { 1.0 }))
                .collect()),
            "inf" => Ok((0..n)
                .map(|i| Some(if i == 0 { f32::INFINITY } else { 1.0 }))
                .collect()),
            "error" => Err("hostile plugin returns an error on purpose".into()),
            // 1.0 in slot k means escape route k worked; the host test expects all zeros.
            "escape" => {
                let routes = [
                    std::fs::read("/etc/passwd").is_ok(),
                    std::fs::read_dir(".").is_ok() || std::fs::read_dir("/").is_ok(),
                    std::fs::write("/tmp/rwkvtune-plugin-escape", b"x").is_ok(),
                    std::env::var("HOME").is_ok() || std::env::vars().next().is_some(),
                    std::env::args().next().is_some(),
                    std::net::TcpStream::connect("127.0.0.1:22").is_ok(),
                ];
                Ok((0..n)
                    .map(|i| Some(routes.get(i).copied().unwrap_or(false) as u8 as f32))
                    .collect())
            }
            "stateful" => Ok(vec![Some(self.calls as f32); n]),
            "print" => {
                println!("hello from stdout");
                eprintln!("hello from stderr");
                info("hello from log");
                Ok(vec![Some(0.0); n])
            }
            // Round-trips the completions through the host tokenizer: 1.0 when text survives.
            "host-calls" => {
                let ids = tokenize(&batch.completions)?;
                let back = detokenize(&ids)?;
                Ok(back
                    .iter()
                    .zip(&batch.completions)
                    .map(|(b, c)| Some((b == c) as u8 as f32))
                    .collect())
            }
            other => Err(format!("unknown mode {other:?}")),
        }
    }
}

export_reward!(Hostile);
