// Test binaries of this crate link libtorch: give them an rpath so no LD_LIBRARY_PATH is needed.
fn main() {
    if let Ok(lib) = std::env::var("DEP_RWKVTUNE_KERNELS_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
    }
}
