"""Maps the repo's top-level folders into the single `pyratok` import namespace.

`pipelines/` -> `pyratok.pipelines`, `model/` -> `pyratok.model`, `pyratok/` -> `pyratok`
(core + CLI). A mapping keeps the design card's layout without claiming the
generic top-level names `pipelines` and `model` in a user's environment.
"""

from setuptools import find_packages, setup

ROOTS = {"pyratok": "pyratok", "pyratok.pipelines": "pipelines", "pyratok.model": "model"}
# Data the code looks up at run time, shipped inside the wheel (importlib.resources finds it from
# any working directory): the presets and the DeepSpeed JSONs they name.
DATA = {"pyratok.presets": ("configs", ["*.yaml"]), "pyratok.deepspeed_configs": ("infra/deepspeed", ["*.json"])}


def _packages() -> list[str]:
    names = []
    for name, folder in ROOTS.items():
        names.append(name)
        names += [f"{name}.{sub}" for sub in find_packages(folder)]
    # pyratok's own find also sees nothing of the mapped folders, so no duplicates.
    return sorted(set(names))


setup(
    packages=_packages() + sorted(DATA),
    package_dir={**ROOTS, **{name: folder for name, (folder, _) in DATA.items()}},
    package_data={"pyratok": ["py.typed"], **{name: files for name, (_, files) in DATA.items()}},
)
