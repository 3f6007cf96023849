//! Standard output of the examples: a reader that goes away is not a
//! failure, a write that fails is.

/// `println!` that returns the write's outcome as [`written`] judges it;
/// call it as `outln!(...)?`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::common::written({
            use std::io::Write as _;
            writeln!(std::io::stdout(), $($arg)*)
        })
    };
}
pub(crate) use outln;

/// A write to standard output judged: a closed pipe (`... | head`) is no
/// error, as nobody reads the rest (later writes fail the same way, and the
/// exit status stays the tool's own); any other failure (a full disk) is, so
/// that a report that was not written never passes for one.
pub fn written(result: std::io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::anyhow!(
            "cannot write the output to standard output: {error}"
        )),
        _ => Ok(()),
    }
}
