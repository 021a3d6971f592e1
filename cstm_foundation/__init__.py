"""What every layer uses, and that imports nothing heavy (no JAX, no data stack): one-line
errors and the command wrapper (`errors`), paths as users type them, local or gs:// (`paths`),
command-line flags (`cli_flags`), progress bars (`progress`) and console logs (`logs`).
input_pipeline and cstm_jax build on it; it imports neither."""
