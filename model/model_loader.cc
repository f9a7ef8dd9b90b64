// load_model(): a Hugging Face directory or a GGUF file → LlamaModel + Tokenizer.
#include <filesystem>

#include "model/llama_model.h"
#include "model/safetensors.h"

namespace palu::model {

Result<LoadedModel> load_model(const std::string& path, const LoadProgress& progress) {
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
    PALU_ASSIGN_OR_RETURN(out.model, LlamaModel::from_tensors(cfg, tensors, path, progress));
    PALU_ASSIGN_OR_RETURN(out.tokenizer, load_sentencepiece_tokenizer(path + "/tokenizer.model"));
  } else {
    return unimplemented(path + ": not a model directory (GGUF support is not built yet)");
  }
  if (out.tokenizer->vocab_size() > out.model->config().vocab_size) {
    return invalid_argument(path + ": the tokenizer has " + std::to_string(out.tokenizer->vocab_size()) +
                            " pieces but the model's vocab_size is " + std::to_string(out.model->config().vocab_size));
  }
  return out;
}

}  // namespace palu::model
