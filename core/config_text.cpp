// Reading run configs as text: the text-format parser with what protobuf's messages leave out
// (the field probably meant, an enum's valid values and the value's own position, the field of
// a bad number), enum values in any case, and `--set path.to.field=value` overrides. What
// core/config.h's parse_config_text and apply_override run.
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cctype>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/names.h"
#include "core/config.h"

namespace loom {
namespace {

namespace pb = google::protobuf;

// Lists the names of an enum's values, for messages that must say what would have been valid.
std::string enum_values(const pb::EnumDescriptor* e) {
  std::string out;
  for (int i = 0; i < e->value_count(); ++i) out += (i ? ", " : "") + e->value(i)->name();
  return out;
}

std::string field_names(const pb::Descriptor* d) {
  std::string out;
  for (int i = 0; i < d->field_count(); ++i) out += (i ? ", " : "") + d->field(i)->name();
  return out;
}

std::vector<std::string> field_list(const pb::Descriptor* d) {
  std::vector<std::string> out;
  for (int i = 0; i < d->field_count(); ++i) out.push_back(d->field(i)->name());
  return out;
}

// " (did you mean X?)" when `name` looks like a typo of one of `candidates`, else "".
std::string did_you_mean(const std::string& name, const std::vector<std::string>& candidates) {
  const std::string guess = closest_name(name, candidates);
  return guess.empty() ? "" : " (did you mean " + guess + "?)";
}

// The value of `e` whose name equals `name` but for case, or null.
const pb::EnumValueDescriptor* enum_value_any_case(const pb::EnumDescriptor* e,
                                                   const std::string& name) {
  for (int i = 0; i < e->value_count(); ++i)
    if (name_distance(name, e->value(i)->name()) == 0 && name.size() == e->value(i)->name().size())
      return e->value(i);
  return nullptr;
}

// The text between the first two quotes after `marker` in protobuf's message, or "".
std::string quoted_after(const std::string& message, const std::string& marker) {
  const size_t at = message.find(marker);
  if (at == std::string::npos) return "";
  const size_t begin = message.find('"', at + marker.size());
  const size_t end = begin == std::string::npos ? begin : message.find('"', begin + 1);
  return end == std::string::npos ? "" : message.substr(begin + 1, end - begin - 1);
}

// The enum of the field called `field` in any message of the schema, or null.
const pb::EnumDescriptor* enum_of_field(const std::string& field) {
  const pb::FileDescriptor* file = config::RunConfig::descriptor()->file();
  for (int m = 0; m < file->message_type_count(); ++m) {
    const pb::FieldDescriptor* f = file->message_type(m)->FindFieldByName(field);
    if (f && f->enum_type()) return f->enum_type();
  }
  return nullptr;
}

// One of protobuf's parse errors, 0-based as it reports them.
struct ParseError {
  int line = 0, column = 0;
  std::string message;
};

class Collector : public pb::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    errors_.push_back({line, column, message});
  }
  void AddWarning(int line, int column, const std::string& message) override {
    AddError(line, column, "warning: " + message);
  }
  const std::vector<ParseError>& errors() const { return errors_; }

 private:
  std::vector<ParseError> errors_;
};

// Offsets of the starts of `text`'s lines.
std::vector<size_t> line_starts(const std::string& text) {
  std::vector<size_t> starts{0};
  for (size_t i = 0; i < text.size(); ++i)
    if (text[i] == '\n') starts.push_back(i + 1);
  return starts;
}

bool identifier_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// The byte offset of protobuf's (line, column): its tokenizer counts a tab as reaching the next
// multiple of 8 columns.
size_t offset_of(const std::string& text, const std::vector<size_t>& starts, int line, int column) {
  const size_t begin = starts[std::min(static_cast<size_t>(std::max(line, 0)), starts.size() - 1)];
  size_t at = begin;
  for (int col = 0; at < text.size() && text[at] != '\n' && col < column; ++at)
    col = text[at] == '\t' ? (col / 8 + 1) * 8 : col + 1;
  return at;
}

// Whether offset `at` is inside a # comment: a '#' before it on its line, outside a string.
bool in_comment(const std::string& text, size_t at) {
  const size_t begin = at == 0 ? 0 : text.rfind('\n', at - 1) + 1;  // npos + 1 = 0
  char quote = 0;
  for (size_t i = begin; i < at; ++i) {
    if (quote && text[i] == '\\')
      ++i;
    else if (quote && text[i] == quote)
      quote = 0;
    else if (!quote && (text[i] == '"' || text[i] == '\''))
      quote = text[i];
    else if (!quote && text[i] == '#')
      return true;
  }
  return false;
}

// Where the identifier `word` last occurs as a whole token, outside comments, before protobuf's
// (line, column): it reports an unknown name at the token after it, often on the next line.
// npos if nowhere.
size_t token_before(const std::string& text, const std::vector<size_t>& starts, int line,
                    int column, const std::string& word) {
  if (word.empty()) return std::string::npos;
  for (size_t limit = offset_of(text, starts, line, column); limit > 0;) {
    const size_t at = text.rfind(word, limit - 1);
    if (at == std::string::npos) return at;
    const size_t after = at + word.size();
    if ((at == 0 || !identifier_char(text[at - 1])) &&
        (after >= text.size() || !identifier_char(text[after])) && !in_comment(text, at))
      return at;
    limit = at;
  }
  return std::string::npos;
}

// The field named at the start of the line holding `offset` ("d_model" of "  d_model: abc").
std::string field_on_line(const std::string& text, const std::vector<size_t>& starts, int line) {
  if (line < 0 || static_cast<size_t>(line) >= starts.size()) return "";
  size_t i = starts[line];
  while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) ++i;
  size_t end = i;
  while (end < text.size() && identifier_char(text[end])) ++end;
  return end < text.size() && text.find_first_not_of(" \t", end) != std::string::npos &&
                 text[text.find_first_not_of(" \t", end)] == ':'
             ? text.substr(i, end - i)
             : "";
}

// `FILE:LINE:COL: message` with what protobuf leaves out: the fields that exist (and the one
// probably meant), the valid values of an enum, the field whose number is bad, and an unknown
// enum value's own position.
std::string describe(const ParseError& error, const std::string& text, const std::string& source) {
  const std::vector<size_t> starts = line_starts(text);
  int line = error.line, column = error.column;
  std::string message = error.message;
  const std::string type_name = quoted_after(message, "Message type");
  // protobuf reports an unknown name at the token after it: point at the name itself.
  const auto move_to = [&](const std::string& word) {
    if (const size_t at = token_before(text, starts, line, column, word); at != std::string::npos) {
      line =
          static_cast<int>(std::upper_bound(starts.begin(), starts.end(), at) - starts.begin()) - 1;
      column = static_cast<int>(at - starts[line]);
    }
  };
  if (message.find("has no field named") != std::string::npos && !type_name.empty()) {
    const std::string field = quoted_after(message, "has no field named");
    move_to(field);
    const pb::Descriptor* d =
        config::RunConfig::descriptor()->file()->pool()->FindMessageTypeByName(type_name);
    if (d) {
      if (message.ends_with(".")) message.pop_back();
      message += did_you_mean(field, field_list(d)) + ". Fields: " + field_names(d) + ".";
    }
  } else if (message.find("enumeration value") != std::string::npos) {
    move_to(quoted_after(message, "enumeration value"));
    if (const pb::EnumDescriptor* e = enum_of_field(quoted_after(message, "for field")))
      message += " Valid values: " + enum_values(e) + ".";
  } else if (message.starts_with("Expected integer") || message.starts_with("Expected double") ||
             message.starts_with("Integer out of range") ||
             message.starts_with("Expected identifier")) {
    const std::string field = field_on_line(text, starts, line);
    if (!field.empty()) message = field + ": " + message;
  }
  return source + ":" + std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " +
         message;
}

template <typename T>
T parse_number(const std::string& text, const std::string& where) {
  std::istringstream in(text);
  T value{};
  in >> value;
  if (!in || !in.eof())
    throw Error(where + ": \"" + text + "\" is not a valid number for this field");
  return value;
}
}  // namespace

config::RunConfig parse_config_text(const std::string& text, const std::string& source) {
  // Enum values are matched without regard to case: `residual: ladder` is LADDER. protobuf
  // matches exactly, so a value it refuses that matches in another case is rewritten, and the
  // text parsed again.
  std::string edited = text;
  for (int attempt = 0;; ++attempt) {
    config::RunConfig cfg;
    pb::TextFormat::Parser parser;
    Collector collector;
    parser.RecordErrorsTo(&collector);
    if (parser.ParseFromString(edited, &cfg)) return cfg;
    const ParseError& first = collector.errors().front();
    const std::string value = quoted_after(first.message, "enumeration value");
    const pb::EnumDescriptor* e = enum_of_field(quoted_after(first.message, "for field"));
    const pb::EnumValueDescriptor* meant =
        e && attempt < 1000 ? enum_value_any_case(e, value) : nullptr;
    const size_t at =
        meant ? token_before(edited, line_starts(edited), first.line, first.column, value)
              : std::string::npos;
    if (at == std::string::npos) {
      std::string errors;
      for (const ParseError& error : collector.errors()) {
        if (!errors.empty()) errors += '\n';
        errors += describe(error, edited, source);
      }
      throw Error(errors);
    }
    edited.replace(at, value.size(), meant->name());
  }
}

namespace {

// Reflection's setter of one type, or its adder when the field is repeated.
template <typename T>
using Setter = void (pb::Reflection::*)(pb::Message*, const pb::FieldDescriptor*, T) const;
template <typename T>
void put(pb::Message* message, const pb::FieldDescriptor* field, T value, Setter<T> set,
         Setter<T> add) {
  (message->GetReflection()->*(field->is_repeated() ? add : set))(message, field, value);
}

// Sets `field` of `message` to `value` parsed as its type, or appends it when the field is
// repeated. `where` and `walked` (the field's dotted path) name it in errors.
void set_scalar(pb::Message* message, const pb::FieldDescriptor* field, const std::string& value,
                const std::string& where, const std::string& walked) {
  using R = pb::Reflection;
  switch (field->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
      return put(message, field, parse_number<int32_t>(value, where), &R::SetInt32, &R::AddInt32);
    case pb::FieldDescriptor::CPPTYPE_INT64:
      return put(message, field, parse_number<int64_t>(value, where), &R::SetInt64, &R::AddInt64);
    case pb::FieldDescriptor::CPPTYPE_UINT32:
      return put(message, field, parse_number<uint32_t>(value, where), &R::SetUInt32,
                 &R::AddUInt32);
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      if (!value.empty() && value[0] == '-') throw Error(where + ": must not be negative");
      return put(message, field, parse_number<uint64_t>(value, where), &R::SetUInt64,
                 &R::AddUInt64);
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
      return put(message, field, parse_number<float>(value, where), &R::SetFloat, &R::AddFloat);
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      return put(message, field, parse_number<double>(value, where), &R::SetDouble, &R::AddDouble);
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      if (value != "true" && value != "false")
        throw Error(where + ": " + walked + " takes true or false");
      return put(message, field, value == "true", &R::SetBool, &R::AddBool);
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      const pb::EnumValueDescriptor* v = enum_value_any_case(field->enum_type(), value);
      if (!v)
        throw Error(where + ": \"" + value + "\" is not a value of " + walked +
                    ". Valid values: " + enum_values(field->enum_type()) + ".");
      return put(message, field, v, &R::SetEnum, &R::AddEnum);
    }
    case pb::FieldDescriptor::CPPTYPE_STRING:
      return put<std::string>(message, field, value, &R::SetString, &R::AddString);
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      LOOM_CHECK(false);
  }
}

// The items of a repeated field's comma-separated value ("1, 2,4" → 1 2 4; "" → none).
std::vector<std::string> list_items(const std::string& value) {
  std::vector<std::string> items;
  if (value.find_first_not_of(" \t") == std::string::npos) return items;
  std::istringstream in(value);
  for (std::string item; std::getline(in, item, ',');) {
    const size_t begin = item.find_first_not_of(" \t"), end = item.find_last_not_of(" \t");
    items.push_back(begin == std::string::npos ? "" : item.substr(begin, end - begin + 1));
  }
  if (value.back() == ',') items.push_back("");  // getline drops a last empty item
  return items;
}

}  // namespace

void apply_override(config::RunConfig& cfg, const std::string& assignment) {
  const std::string where = "--set " + assignment;
  size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw Error(where + ": expected path.to.field=value, e.g. --set optim.lr=3e-4" +
                (eq == std::string::npos
                     ? " (the value follows \"=\": --set " + assignment + "=VALUE)"
                     : ""));
  std::string path = assignment.substr(0, eq), value = assignment.substr(eq + 1);

  pb::Message* message = &cfg;
  const pb::FieldDescriptor* field = nullptr;
  std::string walked;
  for (size_t start = 0;;) {
    size_t dot = path.find('.', start);
    std::string name =
        path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const pb::Descriptor* d = message->GetDescriptor();
    field = d->FindFieldByName(name);
    if (!field)
      throw Error(where + ": no field \"" + name + "\" in " +
                  (walked.empty() ? "the config" : walked) + did_you_mean(name, field_list(d)) +
                  " (fields: " + field_names(d) + ")");
    walked += (walked.empty() ? "" : ".") + name;
    if (dot == std::string::npos) break;
    if (field->type() != pb::FieldDescriptor::TYPE_MESSAGE || field->is_repeated())
      throw Error(where + ": " + walked + " is not a section, it has no sub-fields");
    message = message->GetReflection()->MutableMessage(message, field);
    start = dot + 1;
  }
  if (field->type() == pb::FieldDescriptor::TYPE_MESSAGE)
    throw Error(where + ": " + walked + " is a section; name one of its fields (" +
                field_names(field->message_type()) + ")");
  if (!field->is_repeated()) {
    set_scalar(message, field, value, where, walked);
    return;
  }
  // A list replaces the field's values: train.eval_loops=1,2,4 (an empty value: none).
  message->GetReflection()->ClearField(message, field);
  for (const std::string& item : list_items(value)) {
    if (item.empty())
      throw Error(where + ": an empty item in the list; " + walked +
                  " takes values separated by commas, e.g. " + walked + "=1,2,4");
    set_scalar(message, field, item, where, walked);
  }
}

}  // namespace loom
