"""tasks.export(..., serving=True) leaves a folder TF Serving can be pointed at."""
from kerasllm.export.tf_serving import read_warmup_requests


def test_export_with_serving_bundle(classifier_export):
    paths = classifier_export  # the session export, written with serving=True
    bundle = paths["serving"]
    assert "topics" in bundle["models_config"].read_text()
    assert "xla_cpu_compilation_enabled" in bundle["launch"].read_text()
    records = read_warmup_requests(paths["version_dir"] / "assets.extra" / "tf_serving_warmup_requests")
    assert records and all(r.predict_log.request.model_spec.name == "topics" for r in records)
