// load_model(): a Hugging Face directory or a GGUF file → LlamaModel + Tokenizer.
#include <filesystem>

#include "model/llama_model.h"
#include "model/gguf.h"
#include "model/palu_format.h"
#include "model/safetensors.h"
#include "model/tokenizer_loader.h"

namespace palu::model {

Result<LoadedModel> load_model(const std::string& path, const LoadProgress& progress) {
  LoadOptions o;
  o.progress = progress;
  return load_model(path, o);
}

Result<LoadedModel> load_model(const std::string& path, const LoadOptions& options) {
  const LoadProgress& progress = options.progress;
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) return not_found(path + ": no such file or directory");
  LoadedModel out;
  out.path = path;
  if (fs::is_directory(path, ec)) {
    out.format = "safetensors";
    const std::string cfg_path = path + "/config.json";
    PALU_ASSIGN_OR_RETURN(std::string cfg_text, read_text_file(cfg_path));
    PALU_ASSIGN_OR_RETURN(ModelConfig cfg, parse_hf_config(cfg_text, cfg_path));
    PALU_ASSIGN_OR_RETURN(TensorMap tensors, load_safetensors_dir(path));
    const bool compressed = is_palu_model_dir(path);
    PALU_ASSIGN_OR_RETURN(out.model, LlamaModel::from_tensors(cfg, tensors, path, progress, compressed));
    if (compressed) {
      out.format = "palu";
      PALU_ASSIGN_OR_RETURN(PaluManifest manifest, read_palu_manifest(path, cfg));
      PALU_ASSIGN_OR_RETURN(auto factors, read_palu_factors(path, manifest, cfg));
      PALU_RETURN_IF_ERROR(out.model->attach_palu(std::move(manifest), std::move(factors), options.latent_bits));
    } else if (options.latent_bits != 0) {
      return invalid_argument(path + ": latent bits apply to compressed models only (this model has no palu.json)");
    }
    PALU_ASSIGN_OR_RETURN(out.tokenizer, load_tokenizer_from_dir(path));
  } else {
    if (options.latent_bits != 0) {
      return invalid_argument(path + ": latent bits apply to compressed models only (a .gguf file is not one)");
    }
    out.format = "gguf";
    PALU_ASSIGN_OR_RETURN(GgufFile gguf, GgufFile::open(path));
    PALU_ASSIGN_OR_RETURN(ModelConfig cfg, gguf_llama_config(gguf));
    PALU_ASSIGN_OR_RETURN(TensorMap tensors, gguf_tensor_map(gguf));
    PALU_ASSIGN_OR_RETURN(out.model, LlamaModel::from_tensors(cfg, tensors, path, progress));
    PALU_ASSIGN_OR_RETURN(out.tokenizer, gguf_tokenizer(gguf));
  }
  PALU_RETURN_IF_ERROR(check_tokenizer_fits(*out.tokenizer, out.model->config().vocab_size, path));
  return out;
}

}  // namespace palu::model
