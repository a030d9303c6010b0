"""llavao1_jax: LLaVA-o1 (LLaVA-CoT) in JAX/Flax."""
import setuptools

CORE = [
    "jax>=0.7",
    "flax>=0.12",
    "optax",
    "orbax-checkpoint",
    "ml_collections",
    "absl-py",
    "numpy",
    "safetensors",
    "pillow",
    "tqdm",
    "jinja2",
    # Tokenizer: the Llama-3 BPE ranks ship in llama-models; transformers (without torch) wraps them as a fast tokenizer.
    "llama-models",
    "tokenizers",
    "transformers>=4.54",
    # Data: TFDS builders written as ArrayRecord (array-record) and read back through Grain without TensorFlow, which
    # needs importlib_resources.
    "tensorflow-datasets",
    "importlib_resources",
    "array-record",
    "grain",
    # Evaluation: VLMEvalKit's benchmark TSVs read with pandas' own NA and type rules; its xlsx prediction files.
    "pandas",
    "openpyxl",
    # Trainer: TensorBoard event files without TensorFlow.
    "tensorboardX",
    # The main job and the experiments: their plots.
    "matplotlib",
]

EXTRAS = {
    # Parity is checked against this exact transformers version (Meta's vision intermediate-layer semantics; see
    # docs/model.md); torch is the CPU build, used only as the reference. scipy: chi-square tests of sampling.
    "test": ["pytest", "scipy", "transformers==4.54.1", "torch==2.13.0"],
}

CONSOLE_SCRIPTS = [
    "llavao1-evaluate = llavao1_jax.evaluate.__main__:run",
    "llavao1-generate = llavao1_jax.cli.generate:main",
    "llavao1-infer = llavao1_jax.infer:main",
    "llavao1-train = llavao1_jax.train.__main__:run",
]

setuptools.setup(
    name="llavao1_jax",
    version="0.1.0",
    description="LLaVA-o1 / LLaVA-CoT: structured visual reasoning on Llama-3.2-Vision in JAX/Flax",
    packages=setuptools.find_packages(include=["llavao1_jax", "llavao1_jax.*"]),
    package_data={"llavao1_jax": ["**/*.json", "**/*.jinja"]},
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
