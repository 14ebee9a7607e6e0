//! Compiles the C++ autograd ops against the headers of the libtorch that torch-sys linked.
use std::path::PathBuf;

fn main() {
    // torch-sys (links = "tch") exports its libtorch lib dir to direct dependents.
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("DEP_TCH_LIBTORCH_LIB unset: torch-sys must be a direct dependency"),
    );
    let inc = lib
        .parent()
        .expect("libtorch lib dir has a parent")
        .join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    for f in [
        "csrc/wkv7.cpp",
        "csrc/checkpoint.cpp",
        "csrc/head_ce.cpp",
        "csrc/adamw.cpp",
        "csrc/shim.h",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++17")
        .include(&inc)
        .include(inc.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        // The kernel loops must be fast even in debug builds; the headers dominate compile time anyway.
        .opt_level(3)
        .flag("-w")
        .file("csrc/wkv7.cpp")
        .file("csrc/checkpoint.cpp")
        .file("csrc/head_ce.cpp")
        .file("csrc/adamw.cpp")
        .compile("rwkvtune_kernels");
    // Dependents (the core crate and the CLI) read this to bake an rpath into their binaries.
    println!("cargo:libtorch_lib={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath={}", lib.display());
}
