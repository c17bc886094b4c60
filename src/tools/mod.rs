//! Operator tools built on the pipeline's layers, never imported by the pipeline: the traffic
//! generator, replay, the demo, the probes that check an end state, and what `dead-letters` and
//! `status` report.

pub mod dead_letters;
pub mod demo;
pub mod probe;
pub mod replay;
pub mod status;
pub mod table;
pub mod traffic;

/// An error and its causes in one line, each cause once: a cause whose text the line already
/// holds (libraries often print their source inside their own message) is left out.
pub fn describe_error(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(io)
            .context("cannot read /x: no such file")
            .context("loading schemas");
        assert_eq!(
            describe_error(&error),
            "loading schemas: cannot read /x: no such file"
        );
    }
}
