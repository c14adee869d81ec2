"""Layer 5, viz: pictures. Imports core, data, explain, training.

    figures         plain plotly figures (figure_base: what they are drawn with; key_atlas: the key atlas)
    explorers       ChartExplorer, ChartCountExplorer (attention_cache: one recorded forward per image;
                    explorer_controls: the widgets both share)
    explorer_html   the explorers and the key atlas as self-contained HTML, no kernel (explorer_data: the
                    arrays they embed; assets/: the page's script and style)
    report          the HTML report `mkviz demo` writes
    scene_figures   scenes with boxes, mask outlines and class names (ground truth or a detector's output)
"""
