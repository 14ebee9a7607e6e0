//! Integration tests of rwkvtune-core against the official RWKV-7 reference cases in
//! `../shared/reference` (see its README for what each case pins down and the tolerances).

mod common;
mod grpo;
mod hub_io;
mod init;
mod lora;
mod parity;
mod train_step;
mod trainer;
