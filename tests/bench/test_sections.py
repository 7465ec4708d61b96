"""A bench script rewrites only its own section of BENCHMARKS.md (bench/sections.py)."""

from bench.sections import write_section


def test_a_section_is_replaced_in_place_and_the_rest_of_the_file_stays(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    write_section(path, "train_speed", "# Training speed\n\nold figures")
    path.write_text("# Summary\n\n" + path.read_text() + "\n\n## Queue page\n\nhand-written figures\n")
    write_section(path, "train_speed", "# Training speed\n\nnew figures\n")
    text = path.read_text()
    assert text.startswith("# Summary\n\n<!-- train_speed: begin -->\n# Training speed\n\nnew figures\n")
    assert "old figures" not in text and text.endswith("## Queue page\n\nhand-written figures\n")
    write_section(path, "run_all", "| row |")  # another script's section goes on top, the others stay
    assert path.read_text().startswith("<!-- run_all: begin -->\n| row |\n<!-- run_all: end -->\n\n# Summary")
    assert "new figures" in path.read_text()
