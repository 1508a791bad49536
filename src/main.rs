//! The `tend` binary: parse arguments, run, map the outcome to an exit code.
//!
//! Memory comes from jemalloc, told to hand freed pages back at once: the manifest load
//! parses on several threads and frees most of what it parsed, and glibc's malloc kept those
//! pages (one arena per thread), so a no-op plan of 50,000 resources peaked ~40 MB higher.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (read before `main`): purge freed pages immediately instead of after
/// its default 10 s decay, which a short command never reaches and a daemon does not need.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Option<&'static std::ffi::c_char> =
    Some(unsafe { &*c"dirty_decay_ms:0,muzzy_decay_ms:0".as_ptr() });

fn main() -> std::process::ExitCode {
    tend::cli::main()
}
