//! Reading the worker's metrics as Prometheus renders them.

/// The value of one sample line `name{labels} value` whose labels include all of `want`, or of
/// the line `name value` of a series without labels when `want` is empty.
pub fn sample(rendered: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    rendered.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if let Some(value) = rest.strip_prefix(' ').filter(|_| want.is_empty()) {
            return value.trim().parse().ok();
        }
        let (labels, value) = rest.strip_prefix('{')?.split_once("} ")?;
        want.iter()
            .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}
