//! Link the code a chain runs together at the start of the release binary's text.
//!
//! A chain spends its life asleep, so what it costs is the memory it maps, and almost
//! all of that is file pages: when a page of an already cached file is faulted in, the
//! kernel maps up to 64 KiB around it ("fault-around"), so the ~1.5 MB of code a chain
//! runs, scattered over ~4 MB of text (TLS, HTTP, and the rest seldom run), used to map
//! ~3.5 MB. `scripts/hot-text/hot-text.ld` (made by `scripts/hot-text/profile-hot-text.sh`) lists those
//! functions; linked first, they map ~1.8 MB. Both GNU ld and lld accept the script.
//! Set RUN_CHAIN_NO_HOT_TEXT=1 to link without it (e.g. with a linker that takes no
//! linker scripts, such as mold).

fn main() {
    println!("cargo:rerun-if-changed=scripts/hot-text/hot-text.ld");
    println!("cargo:rerun-if-env-changed=RUN_CHAIN_NO_HOT_TEXT");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if !linux || !release || std::env::var_os("RUN_CHAIN_NO_HOT_TEXT").is_some() {
        return;
    }
    let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let script = std::path::Path::new(&dir).join("scripts/hot-text/hot-text.ld");
    let Some(script) = script.to_str() else {
        return;
    };
    // -Xlinker passes its argument as is (-Wl, would split a path at its commas).
    for arg in ["-Xlinker", "-T", "-Xlinker", script] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
