//! The README walkthrough (`scripts/walkthrough.sh`) runs in the test suite,
//! so the commands users copy keep working: it mints credentials with
//! `tollgate token` and checks that `tollgate check` allows and denies each
//! request as the README says.

use std::process::Command;

#[test]
fn readme_walkthrough_decides_as_documented() {
    let root = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("bash")
        .arg(format!("{root}/scripts/walkthrough.sh"))
        .env("TOLLGATE", env!("CARGO_BIN_EXE_tollgate"))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "walkthrough failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    for expected in [
        "ALLOW",
        "set    x-tollgate-user: alice",
        "DENY 401 token_binding_mismatch",
        "DENY 401 attestation_missing",
        "DENY 403 https_required",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("eyJ"),
        "the walkthrough must not print tokens"
    );
}
