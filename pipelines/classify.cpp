// memmamba classify: see classify.hpp.
#include "pipelines/classify.hpp"

#include <htslib/vcf.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>

#include "io/atomic_file.hpp"

namespace mm::pipelines {

namespace {

std::string header_text(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  return s;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s;
}

// The class index of each labelled example (-1 when unlabelled); unknown labels are errors.
std::vector<int> label_indices(const Classifier& c, const std::vector<Example>& ex) {
  std::map<std::string, int> index;
  for (size_t i = 0; i < c.labels.size(); ++i) index[c.labels[i]] = int(i);
  std::vector<int> y;
  for (const auto& e : ex) {
    if (e.label.empty()) {
      y.push_back(-1);
      continue;
    }
    auto it = index.find(e.label);
    if (it == index.end())
      throw Error("label '" + e.label + "' is not one the classifier knows (" + join(c.labels) + ")", e.file, e.line);
    y.push_back(it->second);
  }
  return y;
}

void write_text(const std::string& path, const std::string& text) {
  if (path == "-") {
    if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size() || std::fflush(stdout) != 0)
      throw Error("cannot write to stdout");
    return;
  }
  io::AtomicFile f(path);
  f.write(text);
  f.commit();
}

}  // namespace

std::vector<float> classify_probs(const Classifier& c, MemMamba<float>* model, const std::vector<Example>& ex,
                                  const FeatureRun& run, const Reporter& rep) {
  const int64_t n = int64_t(ex.size()), C = c.head.C, F = c.head.F;
  const std::vector<float> x = compute_features(model, c.spec, ex, run, rep);
  std::vector<float> probs(size_t(n * C));
  for (int64_t i = 0; i < n; ++i) {
    c.head.forward(x.data() + i * F, probs.data() + i * C);
    softmax(probs.data() + i * C, C);
  }
  return probs;
}

ClassifyResult classify(const Classifier& c, const ClassifyOptions& o, const Reporter& rep) {
  const bool vcf = o.input.format == LabelledFormat::vcf;
  if (vcf && c.spec.input != InputKind::variant)
    throw UsageError("this classifier was trained on sequences; a VCF needs a classifier fine-tuned on variants");
  if (!vcf && c.spec.input == InputKind::variant)
    throw UsageError("this classifier was trained on variants: give it a VCF/BCF (with -f REF)");
  std::unique_ptr<MemMamba<float>> model;
  if (c.has_backbone) model = std::make_unique<MemMamba<float>>(c.config, c.backbone);
  LabelledOptions in = o.input;
  in.upstream = c.spec.upstream;
  in.downstream = c.spec.downstream;
  const int64_t C = int64_t(c.labels.size());
  ClassifyResult res;
  std::vector<int> ys;        // labelled examples only
  std::vector<float> yprobs;

  if (!vcf) {
    LabelledSet set = read_labelled(in, false, rep);
    if (set.examples.empty()) throw Error("no sequences to classify", in.path);
    const std::vector<int> y = label_indices(c, set.examples);
    const std::vector<float> probs = classify_probs(c, model.get(), set.examples, o.run, rep);
    std::string text = "##memmamba classify: " +
                       header_text("version=" + o.version + "; model=" + o.model_path + "; command=" + o.command) + "\n";
    text += "id\tpredicted";
    for (const auto& l : c.labels) text += "\tprob_" + l;
    text += '\n';
    char buf[32];
    for (size_t i = 0; i < set.examples.size(); ++i) {
      const float* p = probs.data() + i * size_t(C);
      const int64_t pred = std::max_element(p, p + C) - p;
      text += header_text(set.examples[i].id) + "\t" + c.labels[size_t(pred)];
      for (int64_t k = 0; k < C; ++k) {
        std::snprintf(buf, sizeof buf, "\t%.6g", double(p[k]));
        text += buf;
      }
      text += '\n';
      if (y[i] >= 0) {
        ys.push_back(y[i]);
        yprobs.insert(yprobs.end(), p, p + C);
      }
    }
    res.examples = int64_t(set.examples.size());
    write_text(o.output, text);
  } else {
    if (in.reference.empty()) throw UsageError("VCF input needs the reference FASTA (-f REF.fa)");
    io::FastaOptions fo;
    fo.reporter = rep;
    io::IndexedFasta fasta(in.reference, fo);
    io::VcfReadOptions ro;
    ro.ref_check = io::RefCheck::none;
    io::VcfReader reader(in.path, ro);
    if (!in.label_key.empty()) check_label_key(reader, in.label_key);
    const std::string prov = "##memmamba_classify=" +
                             header_text("version=" + o.version + "; model=" + o.model_path + "; command=" + o.command);
    if (bcf_hdr_append(reader.header(), prov.c_str()) < 0 || bcf_hdr_sync(reader.header()) < 0)
      throw Error("cannot add the ##memmamba_classify header line", o.output);
    const std::string prob_desc =
        C == 2 ? "MemMamba classifier probability of '" + c.labels[1] + "' (the positive class; labels " + join(c.labels) + ")"
               : "MemMamba classifier probability of the predicted label (labels " + join(c.labels) + ")";
    const std::vector<io::InfoDef> defs = {
        {"MM_CLASS", "A", "String", "MemMamba classifier: predicted label per ALT"},
        {"MM_PROB", "A", "Float", prob_desc},
        {"MM_CLASS_SKIP", ".", "String",
         "Why a record or ALT was not classified: ref_mismatch, symbolic, breakend, spanning_deletion, missing_alt, "
         "n_context, contig_missing (per ALT, '.' = classified)"},
    };
    io::VcfWriter writer(o.output, reader, defs, o.vcf_format);
    bool more = true;
    std::vector<io::VcfRecord> recs;
    int64_t done = 0;
    while (more) {
      recs.clear();
      while (int64_t(recs.size()) < std::max<int64_t>(1, o.batch)) {
        io::VcfRecord r;
        if (!reader.next(r)) {
          more = false;
          break;
        }
        recs.push_back(std::move(r));
      }
      std::vector<PreparedVariant> prep;
      std::vector<Example> ex;
      std::vector<std::pair<size_t, size_t>> where;  // (record, alt) of each example
      for (size_t i = 0; i < recs.size(); ++i) {
        io::VcfRecord& r = recs[i];
        prep.push_back(prepare_variant(r, fasta, in.upstream, in.downstream));
        const auto labels = in.label_key.empty() ? std::vector<std::string>(r.alts.size())
                                                 : info_labels(reader, r, in.label_key);
        if (!prep.back().record_skip.empty()) continue;
        for (size_t k = 0; k < r.alts.size(); ++k) {
          if (!prep.back().alt_skip[k].empty()) continue;
          Example e;
          e.id = r.contig + ":" + std::to_string(r.pos0 + 1) + ":" + r.ref + ":" + r.alts[k];
          e.label = labels[k];
          e.file = reader.path();
          e.line = r.line;
          e.window = prep.back().windows[k];
          ex.push_back(std::move(e));
          where.push_back({i, k});
        }
      }
      const std::vector<int> y = label_indices(c, ex);
      const std::vector<float> probs = ex.empty() ? std::vector<float>()
                                                  : classify_probs(c, model.get(), ex, o.run, Reporter{});
      // Per record: class and probability per ALT.
      std::vector<std::vector<int>> pred(recs.size());
      std::vector<std::vector<float>> pv(recs.size());
      for (size_t i = 0; i < recs.size(); ++i) {
        pred[i].assign(recs[i].alts.size(), -1);
        pv[i].assign(recs[i].alts.size(), 0.0f);
      }
      for (size_t j = 0; j < ex.size(); ++j) {
        const float* p = probs.data() + j * size_t(C);
        const int k = int(std::max_element(p, p + C) - p);
        pred[where[j].first][where[j].second] = k;
        pv[where[j].first][where[j].second] = C == 2 ? p[1] : p[k];
        if (y[j] >= 0) {
          ys.push_back(y[j]);
          yprobs.insert(yprobs.end(), p, p + C);
        }
      }
      for (size_t i = 0; i < recs.size(); ++i) {
        io::VcfRecord& r = recs[i];
        const size_t n = r.alts.size();
        if (!prep[i].record_skip.empty()) {
          res.skipped += int64_t(n);
          writer.set_string(r, "MM_CLASS_SKIP", prep[i].record_skip);
        } else {
          std::vector<float> v(n);
          std::string cls, skip;
          bool any = false, any_skip = false;
          for (size_t k = 0; k < n; ++k) {
            if (k) {
              cls += ',';
              skip += ',';
            }
            if (pred[i][k] >= 0) {
              v[k] = pv[i][k];
              cls += c.labels[size_t(pred[i][k])];
              skip += '.';
              any = true;
              ++res.examples;
            } else {
              bcf_float_set_missing(v[k]);
              cls += '.';
              skip += prep[i].alt_skip[k];
              any_skip = true;
              ++res.skipped;
            }
          }
          if (any) {
            writer.set_floats(r, "MM_PROB", v);
            writer.set_string(r, "MM_CLASS", cls);
          }
          if (any_skip) writer.set_string(r, "MM_CLASS_SKIP", skip);
        }
        writer.write(r);
      }
      done += int64_t(recs.size());
      rep.advance(double(done), 0, "records");
    }
    writer.close();
  }

  if (!ys.empty()) res.metrics = evaluate_metrics(ys, yprobs, C);
  if (!o.metrics_file.empty()) {
    if (!res.metrics) rep.say("no labelled examples: no metrics to write to " + o.metrics_file);
    else write_text(o.metrics_file, res.metrics->to_json(c.labels) + "\n");
  }
  return res;
}

}  // namespace mm::pipelines
