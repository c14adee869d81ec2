"""Layer 7, course: the notebooks' exercises, their grading and the course book. Imports the layers below.

    exercises       the exercise checks the notebooks call (`from mkviz.exercises import check`)
    grading         `mkviz grade`: run notebooks, report their checks
    book            `make book`: the course as a static site
    notebook_runs   a notebook's py:percent file run as a script (no Jupyter), and the page of its results
"""
