//! Stamps the binary's `--version` with the git commit it was built from and the build date
//! ("unknown" outside a git checkout).

use std::process::Command;

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    let commit =
        output("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    let date = output("date", &["-u", "+%Y-%m-%d"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TENANTSTREAM_COMMIT={commit}");
    println!("cargo:rustc-env=TENANTSTREAM_BUILD_DATE={date}");
    // Again when the checked-out commit moves (HEAD, or the branch it points to).
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Some(branch) = output("git", &["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed=.git/{branch}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
