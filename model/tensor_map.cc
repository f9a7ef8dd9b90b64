#include "model/tensor_map.h"

namespace palu::model {

std::string TensorView::shape_string() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Status TensorMap::add(const std::string& name, TensorView view) {
  if (auto it = tensors_.find(name); it != tensors_.end()) {
    return data_loss("tensor '" + name + "' appears twice (in " + it->second.file + " and " + view.file + ")");
  }
  tensors_.emplace(name, std::move(view));
  return Status::ok();
}

const TensorView* TensorMap::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

Result<const TensorView*> TensorMap::get(const std::string& name, std::string_view origin) const {
  const TensorView* v = find(name);
  if (v == nullptr) return not_found(std::string(origin) + ": tensor '" + name + "' is missing");
  return v;
}

}  // namespace palu::model
