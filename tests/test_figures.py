"""The figures module: what each figure shows, on small hand-made results."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import matplotlib
import numpy as np
import pytest
from matplotlib import _pylab_helpers
from matplotlib.figure import Figure

from eval import figures
from eval.names import PGD_STEP_SIZE_RULE

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The evaluators and the libraries they adapt: drawing from result JSON needs none.
EVALUATOR_MODULES = (
    "eval.adversarial", "eval.pruning", "eval.saliency", "eval.vis_compat",
    "eval.tfmot_compat", "cleverhans", "tf_keras_vis", "tensorflow_model_optimization",
)


def adversarial_result(clean, attacks=("fgsm", "pgd")):
    return {
        "clean_accuracy": clean,
        "num_examples": 100,
        "attacks": {attack: {"0.1": clean / 2, "0.2": clean / 4} for attack in attacks},
        "settings": {"attacks": list(attacks), "eps": [0.1, 0.2], "pgd_steps": 10,
                     "pgd_step_size": PGD_STEP_SIZE_RULE, "rand_init": {"pgd": True}},
    }


def pruning_result(rule, scale, fine_tuned=True):
    points = {format(s, "g"): {"accuracy": scale * (1 - s**4), "sparsity": s}
              for s in (0.3, 0.5, 0.9)}
    return {"dense_accuracy": scale, "one_shot": points,
            "fine_tuned": points if fine_tuned else {}, "num_examples": 100,
            "settings": {"mask_rule": rule, "num_classes": 10, "fine_tune_epochs": 1,
                         "fine_tune_examples": 64}}


def quality_result(curve=True):
    result = {"gsnr": 0.02, "per_layer": {"conv": 0.01, "logits": 0.05}}
    if curve:
        result["training_curve"] = {"1": 0.01, "2": 0.02}
    return result


@pytest.fixture(scope="module")
def images():
    """Four 6x6 images: a square, brighter in each, on an exactly-zero background."""
    images = np.zeros((4, 6, 6, 1), np.float32)
    for index, image in enumerate(images):
        image[1:4, 2:5] = 0.2 * (index + 1)
    return images


def lines_by_label(axes):
    return {line.get_label(): line for line in axes.get_lines()}


def test_save_writes_a_png_atomically_and_leaves_pyplot_alone(tmp_path):
    rc_before = dict(matplotlib.rcParams)
    figure = figures.plot_adversarial(adversarial_result(0.9))
    assert isinstance(figure, Figure)
    path = tmp_path / "eval" / "adversarial.png"
    figures.save(figure, path)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert os.listdir(path.parent) == ["adversarial.png"]  # No temporary file left.
    # No pyplot figure was opened and the style did not leak into matplotlib's.
    assert not _pylab_helpers.Gcf.get_all_fig_managers()
    assert dict(matplotlib.rcParams) == rc_before
    assert not figure.axes[0].spines["top"].get_visible()  # The style was applied.


def test_adversarial_one_run_has_one_line_per_attack_from_the_clean_accuracy():
    figure = figures.plot_adversarial(adversarial_result(0.9), title="Fashion-MNIST")
    (axes,) = figure.axes
    assert axes.get_title() == "Fashion-MNIST"
    assert axes.get_ylim() == (0.0, 1.0)
    lines = lines_by_label(axes)
    assert set(lines) == {"FGSM", "PGD-10", "clean (0.900)"}
    for name in ("FGSM", "PGD-10"):
        assert list(lines[name].get_xdata()) == [0.0, 0.1, 0.2]
        assert lines[name].get_ydata()[0] == 0.9
    assert lines["FGSM"].get_linestyle() != lines["PGD-10"].get_linestyle()
    # A list of one result is one run too.
    listed = figures.plot_adversarial([adversarial_result(0.9)])
    assert set(lines_by_label(listed.axes[0])) == set(lines)


def test_adversarial_overlay_has_a_colour_per_run_and_a_key_for_each():
    first, second = adversarial_result(0.9), adversarial_result(0.8)
    figure = figures.plot_adversarial([first, second], labels=["none", "mean"])
    (axes,) = figure.axes
    lines = lines_by_label(axes)
    assert lines["none: FGSM"].get_color() == lines["none: PGD-10"].get_color()
    assert lines["none: FGSM"].get_color() != lines["mean: FGSM"].get_color()
    assert lines["none: FGSM"].get_linestyle() != lines["none: PGD-10"].get_linestyle()
    assert lines["mean: PGD-10"].get_ydata()[0] == 0.8
    # Two keys beside the axes: one entry per run, one per attack and clean.
    run_key, style_key = ([text.get_text() for text in key.get_texts()] for key in figure.legends)
    assert len(run_key) == 2 and all(label in " ".join(run_key) for label in ("none", "mean"))
    assert set(style_key) == {"FGSM", "PGD-10", "clean"}
    with pytest.raises(ValueError, match="one label per result"):
        figures.plot_adversarial([first, second], labels=["none"])
    with pytest.raises(ValueError, match="at least one result"):
        figures.plot_adversarial([])


def test_adversarial_figure_draws_results_read_back_from_json():
    result = json.loads(json.dumps(adversarial_result(0.7, attacks=("bim", "mim"))))
    lines = lines_by_label(figures.plot_adversarial(result).axes[0])
    assert {"BIM-10", "MIM-10"} <= set(lines)


def test_pruning_one_run_has_a_line_per_mode_and_dense_and_chance():
    (axes,) = figures.plot_pruning(pruning_result("mean", 0.9)).axes
    assert axes.get_title().startswith("Accuracy after magnitude pruning (mask rule mean)\n")
    lines = lines_by_label(axes)
    assert {"one-shot", "fine-tuned", "dense (0.900)", "chance"} <= set(lines)
    assert list(lines["one-shot"].get_xdata()) == [0.3, 0.5, 0.9]
    assert lines["chance"].get_ydata()[0] == pytest.approx(0.1)
    # A one-shot-only result has no fine-tuned line.
    lines = lines_by_label(figures.plot_pruning(pruning_result("mean", 0.9, False)).axes[0])
    assert "one-shot" in lines and "fine-tuned" not in lines


def test_pruning_overlay_has_a_colour_per_run():
    results = [pruning_result("none", 0.9), pruning_result("mean", 0.92)]
    figure = figures.plot_pruning(results)
    one_shot = [line for line in figure.axes[0].get_lines() if line.get_label() == "one-shot"]
    assert len(one_shot) == 2 and one_shot[0].get_color() != one_shot[1].get_color()
    run_key = [text.get_text() for text in figure.legends[0].get_texts()]
    assert run_key[0].startswith("none") and run_key[1].startswith("mean")
    with pytest.raises(ValueError, match="labels"):
        figures.plot_pruning(results[:1], labels=["a", "b"])


def test_saliency_has_a_column_per_panel_and_the_mean_focus_in_its_title(images):
    on_object = np.zeros(images.shape[:3])
    on_object[:, 2, 3] = 1.0
    uniform = np.ones(images.shape[:3])
    figure = figures.plot_saliency(
        images, {"object": on_object, "uniform": uniform}, max_images=2,
        row_labels=[f"label {i}" for i in range(4)],
    )
    image_axes = [ax for ax in figure.axes if ax.get_images()]
    assert len(image_axes) == 2 * 3  # Two rows: image, object, uniform.
    titles = [ax.get_title() for ax in image_axes[:3]]
    assert titles == ["image", "object\nfocus 1.00", "uniform\nfocus 0.25"]


def test_saliency_compares_runs_and_refuses_bad_maps(images):
    maps = np.ones(images.shape[:3])
    figure = figures.plot_saliency(images, {"baseline": {"saliency": maps},
                                            "masked": {"saliency": maps}})
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert "baseline\nsaliency\nfocus 0.25" in titles and "masked\nsaliency\nfocus 0.25" in titles
    with pytest.raises(ValueError, match="not a mix"):
        figures.plot_saliency(images, {"a": maps, "b": {"saliency": maps}})
    with pytest.raises(ValueError, match="shape"):
        figures.plot_saliency(images, {"a": maps[:2]})


def test_saliency_comparison_uses_the_images_all_runs_share(images):
    maps = np.ones(images.shape[:3])
    saved = {
        "baseline": {"images": images, "labels": np.arange(4), "saliency": maps},
        "masked": {"images": images[:3], "labels": np.arange(3), "gradcam++": maps[:3]},
    }
    figure = figures.plot_saliency_comparison(saved, title="baseline vs masked")
    assert figure.get_suptitle() == "baseline vs masked"
    assert len([ax for ax in figure.axes if ax.get_images()]) == 3 * 3
    shifted = {"images": images[::-1], "saliency": maps}
    with pytest.raises(ValueError, match="different images"):
        figures.plot_saliency_comparison({**saved, "other": shifted})
    with pytest.raises(ValueError, match="at least one method"):
        figures.plot_saliency_comparison({"empty": {"images": images}})


def test_quality_has_bars_per_layer_and_the_curve_where_logged():
    figure = figures.plot_quality(quality_result())
    bars, curve = figure.axes
    assert len(bars.patches) == 2
    assert list(curve.get_lines()[0].get_xdata()) == [1, 2]
    assert len(figures.plot_quality(quality_result(curve=False)).axes) == 1


def test_gsnr_over_training_has_one_line_per_group():
    curves = {"none": [(1, 0.01), (2, 0.02)], "mean": [(1, 0.02), (2, 0.03)], "random": []}
    (axes,) = figures.plot_gsnr_over_training(curves).axes
    assert [line.get_label() for line in axes.get_lines()] == ["none", "mean"]
    assert axes.get_yscale() == "log"


def test_drawing_from_result_json_imports_no_evaluator(tmp_path):
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from eval import figures
        from tests.test_figures import adversarial_result, pruning_result, quality_result
        images = np.zeros((2, 4, 4, 1), np.float32)
        images[:, 1:3, 1:3] = 1.0
        maps = {{"saliency": np.ones((2, 4, 4)), "lateral_inhibition": np.ones((2, 4, 4))}}
        drawn = [
            figures.plot_adversarial(json.loads(json.dumps(adversarial_result(0.9)))),
            figures.plot_pruning(pruning_result("mean", 0.9)),
            figures.plot_quality(quality_result()),
            figures.plot_gsnr_over_training({{"none": [(1, 0.01), (2, 0.02)]}}),
            figures.plot_forest([dict(metric="m", rule="mean", versus="none", mean=0.1,
                                      low=0.0, high=0.2)]),
            figures.plot_saliency_comparison({{"a": {{"images": images, **maps}}}}),
        ]
        figures.save(drawn[0], {str(tmp_path / "adversarial.png")!r})
        loaded = [name for name in {EVALUATOR_MODULES!r}
                  if any(m == name or m.startswith(name + ".") for m in sys.modules)]
        print(json.dumps(loaded))
        """
    )
    process = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert json.loads(process.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "adversarial.png").read_bytes().startswith(PNG_SIGNATURE)
