//! Reading the worker's metrics as Prometheus renders them.

/// The value of one sample line `name{labels} value` whose labels include all of `want`.
pub fn sample(rendered: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    rendered.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.split_once("} ")?;
        want.iter()
            .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}
