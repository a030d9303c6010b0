"""llavao1_jax: LLaVA-o1 (LLaVA-CoT) in JAX/Flax."""
import setuptools

CORE = [
    "jax>=0.7",
    "flax>=0.12",
    "optax",
    "orbax-checkpoint",
    "ml_collections",
    "numpy",
    "safetensors",
    "pillow",
    "tqdm",
    # Tokenizer: the Llama-3 BPE ranks ship in llama-models; transformers (without torch) wraps them as a fast tokenizer.
    "llama-models",
    "tiktoken",
    "tokenizers",
    "transformers>=4.54",
    # Data pipeline: TFDS builders read back through ArrayRecord without TensorFlow.
    "tensorflow-datasets",
    "importlib_resources",
    "array-record",
    "grain",
    "matplotlib",
    # Trainer: TensorBoard event files without TensorFlow.
    "tensorboardX",
]

EXTRAS = {
    # Parity is checked against this exact transformers version (Meta's intermediate-layer semantics, see
    # ../shared/reference/mllama.md section 7.1); torch is the CPU build used only as the reference.
    "test": ["pytest", "transformers==4.54.1", "torch==2.13.0"],
}

setuptools.setup(
    name="llavao1_jax",
    version="0.1.0",
    description="LLaVA-o1 / LLaVA-CoT: structured visual reasoning on Llama-3.2-Vision in JAX/Flax",
    packages=setuptools.find_packages(include=["llavao1_jax", "llavao1_jax.*"]),
    package_data={"llavao1_jax": ["**/*.json", "**/*.jinja"]},
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["llavao1-train=llavao1_jax.train.__main__:run"]},
)
