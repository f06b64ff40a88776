//! The GitHub workflow runs what .ci/run runs (`make test`), on pushes and pull requests.

use deploy::{read, yaml_docs};

#[test]
fn the_workflow_runs_ci_run_on_push_and_pull_request() {
    let docs = yaml_docs(&read(".github/workflows/ci.yml"));
    assert_eq!(docs.len(), 1, "one workflow document");
    let wf = &docs[0];
    // PyYAML (YAML 1.1) reads the key `on` as true.
    let on = wf
        .get("on")
        .or_else(|| wf.get("true"))
        .expect("the workflow has triggers");
    for event in ["push", "pull_request"] {
        assert!(
            on.get(event).is_some(),
            "the workflow runs on {event}: {on}"
        );
    }
    let steps: Vec<String> = wf["jobs"]
        .as_object()
        .expect("jobs")
        .values()
        .flat_map(|job| job["steps"].as_array().expect("steps").iter())
        .filter_map(|s| s["run"].as_str().map(str::to_owned))
        .collect();
    assert!(
        steps.iter().any(|r| r.trim() == "bash .ci/run"),
        "a step runs .ci/run: {steps:?}"
    );
    assert!(
        read(".ci/run").contains("exec make test"),
        ".ci/run is make test"
    );
}
