"""Maps the repo's top-level folders into the single `pyratok` import namespace.

`pipelines/` -> `pyratok.pipelines`, `model/` -> `pyratok.model`, `pyratok/` -> `pyratok`
(core + CLI). A mapping keeps the design card's layout without claiming the
generic top-level names `pipelines` and `model` in a user's environment.
"""

from setuptools import find_packages, setup

ROOTS = {"pyratok": "pyratok", "pyratok.pipelines": "pipelines", "pyratok.model": "model"}


def _packages() -> list[str]:
    names = []
    for name, folder in ROOTS.items():
        names.append(name)
        names += [f"{name}.{sub}" for sub in find_packages(folder)]
    # pyratok's own find also sees nothing of the mapped folders, so no duplicates.
    return sorted(set(names))


setup(
    packages=_packages(),
    package_dir=ROOTS,
    package_data={"pyratok": ["py.typed"]},
)
