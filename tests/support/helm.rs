//! The real `helm` v4 CLI (built from its Go module by the test setup,
//! beside `kube-apiserver`), run on `charts/tollgate`.
//!
//! Every `Helm` keeps helm's cache, configuration and data directories
//! (`HELM_CACHE_HOME`, `HELM_CONFIG_HOME`, `HELM_DATA_HOME`) and `HOME` in
//! a temporary directory, and clears `KUBECONFIG`: a test never reads or
//! writes the user's helm or cluster settings, and a cluster is only ever
//! reached through an explicit `--kubeconfig`.
//!
//! [`Rendered`] holds the objects of a `helm template` run as JSON, so
//! tests assert on fields (`spec.template.spec.securityContext`…), never on
//! text.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use tempfile::TempDir;

use super::repo_path;

/// The chart under test.
pub fn chart_dir() -> PathBuf {
    repo_path("charts/tollgate")
}

/// A path as a command-line argument (the test's paths are UTF-8).
pub fn path_str(path: &Path) -> String {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
        .to_owned()
}

/// A `helm` binary with a private home.
pub struct Helm {
    binary: PathBuf,
    home: TempDir,
}

/// What one helm command printed.
#[derive(Debug)]
pub struct HelmRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl HelmRun {
    /// stdout then stderr, for messages.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl Helm {
    /// The `helm` built by `scripts/kube-tools.sh`; a missing one fails
    /// the test naming the setup command.
    pub fn new() -> Self {
        let binary = super::kube::tools_dir().join("helm");
        assert!(
            binary.is_file(),
            "{} is missing: run scripts/setup.sh (it builds helm from its Go module with \
             scripts/kube-tools.sh)",
            binary.display()
        );
        let home = tempfile::Builder::new()
            .prefix("tollgate-helm-")
            .tempdir()
            .unwrap();
        Self { binary, home }
    }

    /// A directory for the test's values files.
    pub fn dir(&self) -> &Path {
        self.home.path()
    }

    /// Writes `yaml` to a values file in the private home; returns its path.
    pub fn values_file(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.home.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// Runs `helm args…` and returns what it printed.
    pub fn run(&self, args: &[&str]) -> HelmRun {
        let home = self.home.path();
        let output = Command::new(&self.binary)
            .args(args)
            .env("HOME", home)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env_remove("KUBECONFIG")
            .env_remove("HELM_NAMESPACE")
            .env_remove("HELM_KUBECONTEXT")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        HelmRun {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs helm and panics with its output when it fails.
    pub fn ok(&self, args: &[&str]) -> HelmRun {
        let run = self.run(args);
        assert!(
            run.success,
            "helm {} failed:\n{}",
            args.join(" "),
            run.output()
        );
        run
    }

    /// `helm template tollgate charts/tollgate -n tollgate` with `values`
    /// (a YAML document; empty for the defaults): the rendered objects, or
    /// helm's error output.
    pub fn try_template(&self, values: &str) -> Result<Rendered, String> {
        self.try_template_as("tollgate", "tollgate", values)
    }

    /// [`Helm::try_template`] for the release `release` in `namespace`.
    pub fn try_template_as(
        &self,
        release: &str,
        namespace: &str,
        values: &str,
    ) -> Result<Rendered, String> {
        let file = self.values_file("template-values.yaml", values);
        let run = self.run(&[
            "template",
            release,
            &path_str(&chart_dir()),
            "--namespace",
            namespace,
            "--values",
            &path_str(&file),
        ]);
        if !run.success {
            return Err(run.stderr);
        }
        Ok(Rendered::parse(&run.stdout))
    }

    /// [`Helm::try_template`] that must succeed.
    pub fn template(&self, values: &str) -> Rendered {
        self.try_template(values)
            .unwrap_or_else(|e| panic!("helm template failed:\n{e}\nvalues:\n{values}"))
    }
}

/// The objects of a rendered chart.
pub struct Rendered {
    pub objects: Vec<Value>,
}

impl Rendered {
    /// Parses a multi-document YAML stream (empty documents dropped).
    pub fn parse(yaml: &str) -> Self {
        let documents: Vec<Value> = serde_saphyr::from_multiple(yaml)
            .unwrap_or_else(|e| panic!("helm rendered invalid YAML: {e}\n{yaml}"));
        Self {
            objects: documents.into_iter().filter(|d| !d.is_null()).collect(),
        }
    }

    /// Every object of `kind`.
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// The object `kind`/`name` (in any namespace); panics listing what
    /// was rendered when it is missing.
    pub fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name)
            .unwrap_or_else(|| panic!("no {kind} {name} rendered; objects: {:?}", self.summary()))
    }

    /// The object `kind`/`name`, if rendered.
    pub fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    /// The object `kind`/`name` in `namespace`.
    pub fn get_in(&self, kind: &str, namespace: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| {
                o["kind"] == kind
                    && o["metadata"]["name"] == name
                    && o["metadata"]["namespace"] == namespace
            })
            .unwrap_or_else(|| {
                panic!(
                    "no {kind} {namespace}/{name} rendered; objects: {:?}",
                    self.summary()
                )
            })
    }

    /// `Kind namespace/name` of every object, sorted.
    pub fn summary(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .objects
            .iter()
            .map(|o| {
                format!(
                    "{} {}/{}",
                    o["kind"].as_str().unwrap_or("?"),
                    o["metadata"]["namespace"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
            .collect();
        all.sort();
        all
    }

    /// The pod templates of every Deployment, by Deployment name.
    pub fn pod_specs(&self) -> Vec<(&str, &Value)> {
        self.all("Deployment")
            .into_iter()
            .map(|d| {
                (
                    d["metadata"]["name"].as_str().unwrap(),
                    &d["spec"]["template"]["spec"],
                )
            })
            .collect()
    }
}

/// The value of the environment variable `name` of `container` (a plain
/// `value`; `None` when absent or set from a reference).
pub fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    env_entry(container, name).and_then(|e| e["value"].as_str())
}

/// The entry of the environment variable `name` of `container`.
pub fn env_entry<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}
