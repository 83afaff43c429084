// memmamba finetune / classify: the model's backward from a hidden-state gradient (finite
// differences), features against independent whole passes, the metrics against hand-computed
// values, tiny end-to-end runs (train -> classify -> metrics) for sequences and for a labelled VCF,
// the k-mer baseline, early stopping and class weights in the record, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "io/safetensors.hpp"
#include "io/tokenizer.hpp"
#include "kernels/rmsnorm.hpp"
#include "pipelines/classifier.hpp"
#include "pipelines/classify.hpp"
#include "pipelines/labelled.hpp"
#include "pipelines/vep.hpp"
#include "support/fixtures.hpp"
#include "support/gradcheck.hpp"
#include "support/models.hpp"

namespace fs = std::filesystem;
using mmtest::run_cli;
using namespace mm::pipelines;

namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string line;
  while (std::getline(ss, line)) out.push_back(line);
  return out;
}

std::vector<std::string> fields(const std::string& line, char sep = '\t') {
  std::vector<std::string> out;
  std::stringstream ss(line);
  std::string f;
  while (std::getline(ss, f, sep)) out.push_back(f);
  return out;
}

// Concatenation by appends (GCC 12 warns falsely on "lit" + std::to_string(...)).
template <class... A>
std::string cat(const A&... a) {
  std::string s;
  (s.append(std::string_view(a)), ...);
  return s;
}

// Bases with a given GC fraction.
std::string biased(size_t n, double gc, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0, 1);
  std::string s(n, 'A');
  for (auto& c : s) c = u(rng) < gc ? "GC"[rng() % 2] : "AT"[rng() % 2];
  return s;
}

mm::Config tiny_config() {
  mm::Config c = mmtest::small_config();
  c.n_layer = 2;
  return c;
}

struct Fixture {
  fs::path dir, model, train_tsv, test_fa, ref, vcf;
  std::unique_ptr<mm::MemMamba<float>> net;
};

Fixture& fixture() {
  static Fixture f = [] {
    Fixture f;
    f.dir = mmtest::scratch("finetune");
    f.net = std::make_unique<mm::MemMamba<float>>(mmtest::live_model<float>(tiny_config(), 21));
    f.model = mmtest::save_model(f.dir / "base.safetensors", *f.net);
    std::mt19937_64 rng(3);
    std::string tsv = "id\tsequence\tlabel\n";
    for (int i = 0; i < 40; ++i) {
      const bool gc = i % 2;
      tsv += cat("s", std::to_string(i), "\t", biased(60 + rng() % 80, gc ? 0.8 : 0.2, rng), "\t", gc ? "gc" : "at", "\n");
    }
    f.train_tsv = f.dir / "train.tsv";
    mmtest::write_text(f.train_tsv, tsv);
    std::vector<std::pair<std::string, std::string>> test;
    std::string fa;
    for (int i = 0; i < 16; ++i) {
      const bool gc = i % 3 == 0;
      fa += cat(">t", std::to_string(i), " ", gc ? "gc" : "at", "\n", biased(50 + rng() % 100, gc ? 0.8 : 0.2, rng), "\n");
    }
    f.test_fa = f.dir / "test.fa";
    mmtest::write_text(f.test_fa, fa);

    // A reference and a labelled VCF: SNVs to G/C are 'gain', to A/T 'loss'; plus records that
    // cannot be scored (symbolic ALT, REF mismatch, unknown contig) and a multi-allelic one.
    std::string chr = mmtest::random_bases(3000, rng);
    f.ref = f.dir / "ref.fa";
    mmtest::write_text(f.ref, mmtest::fasta_text({{"chrT", chr}}));
    std::string v = "##fileformat=VCFv4.2\n##contig=<ID=chrT,length=3000>\n##contig=<ID=chrX,length=100>\n"
                    "##INFO=<ID=LAB,Number=A,Type=String,Description=\"class\">\n"
                    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n";
    for (int i = 0; i < 48; ++i) {
      const int64_t pos = 100 + i * 55;  // 1-based
      const char ref = chr[size_t(pos - 1)];
      std::string alts;
      for (char a : std::string("ACGT"))
        if (a != ref) alts += a;
      const char alt = alts[size_t(i) % 3];
      const bool gain = alt == 'G' || alt == 'C';
      v += "chrT\t" + std::to_string(pos) + "\tv" + std::to_string(i) + "\t" + ref + "\t" + alt + "\t.\t.\tLAB=" +
           (gain ? "gain" : "loss") + "\n";
    }
    const char r0 = chr[2899];
    const char a1 = r0 == 'A' ? 'C' : 'A', a2 = r0 == 'G' ? 'T' : 'G';
    v += "chrT\t2900\tmulti\t" + std::string(1, r0) + "\t" + a1 + "," + a2 + "\t.\t.\tLAB=" +
         ((a1 == 'G' || a1 == 'C') ? "gain" : "loss") + "," + ((a2 == 'G' || a2 == 'C') ? "gain" : "loss") + "\n";
    v += "chrT\t2950\tsym\t" + std::string(1, chr[2949]) + "\t<DEL>\t.\t.\tLAB=loss\n";
    const char wrong = chr[2959] == 'A' ? 'C' : 'A';
    v += "chrT\t2960\tmismatch\t" + std::string(1, wrong) + "\tG\t.\t.\tLAB=gain\n";
    v += "chrX\t10\tnocontig\tA\tG\t.\t.\tLAB=gain\n";
    f.vcf = f.dir / "train.vcf";
    mmtest::write_text(f.vcf, v);
    return f;
  }();
  return f;
}

std::string q(const fs::path& p) {  // appends: GCC 12 warns falsely on "lit" + string
  std::string s(1, '\'');
  s += p.string();
  s += '\'';
  return s;
}


// Independent pooled vector: one whole forward pass with Taps, norm_f, mean or last over the bases.
std::vector<double> whole_pass(mm::MemMamba<float>& m, const std::string& letters, bool rc, bool last) {
  const mm::Config& c = m.config();
  std::vector<uint8_t> t = mm::io::encode(letters);
  if (rc) mm::io::reverse_complement(t.data(), t.size());
  std::vector<int32_t> tk = {mm::io::tok::BOS};
  for (uint8_t x : t) tk.push_back(x);
  const int64_t T = int64_t(tk.size()), D = c.d_model;
  std::vector<float> logits(size_t(T * c.vocab));
  mm::Taps<float> taps;
  m.forward(tk.data(), 1, T, logits.data(), nullptr, &taps);
  const std::vector<float>& rows = taps.layers.back().output;
  std::vector<float> y(rows.size());
  mm::cpu::rmsnorm_forward(y.data(), static_cast<float*>(nullptr), rows.data(), m.params().data() + m.table().norm_f(),
                           T, D, c.rms_eps);
  std::vector<double> v(size_t(D), 0.0);
  if (last) {
    for (int64_t k = 0; k < D; ++k) v[size_t(k)] = y[size_t((T - 1) * D + k)];
    return v;
  }
  for (int64_t i = 1; i < T; ++i)
    for (int64_t k = 0; k < D; ++k) v[size_t(k)] += y[size_t(i * D + k)];
  for (auto& x : v) x /= double(T - 1);
  return v;
}

nlohmann::json metadata_json(const fs::path& p, const std::string& key) {
  auto f = mm::io::SafetensorsFile::read(p);
  return nlohmann::json::parse(f.metadata().at(key));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The model: backward from a gradient on the final hidden states

TEST(Finetune, HiddenBackwardMatchesFiniteDifferences) {
  mm::Config cfg = mmtest::small_config();
  mm::MemMamba<double> m = mmtest::live_model<double>(cfg, 7);
  const int64_t B = 2, T = 19, D = cfg.d_model;
  std::vector<int32_t> tk = mmtest::random_tokens(B * T, 11);
  tk[size_t(T)] = mm::io::tok::BOS;
  mmtest::Rng rng(5);
  const std::vector<double> w = rng.vec(size_t(B * T * D));
  auto loss_of = [&](const double* h) {
    double s = 0;
    for (size_t i = 0; i < w.size(); ++i) s += w[i] * h[i] * h[i] * 0.5 + w[i] * h[i];
    return s;
  };
  m.zero_grads();
  const double L0 = m.forward_backward_hidden(tk.data(), B, T, [&](const double* h, double* dh) {
    for (size_t i = 0; i < w.size(); ++i) dh[i] = w[i] * h[i] + w[i];
    return loss_of(h);
  });
  std::vector<double> hid(size_t(B * T * D));
  m.forward_hidden(tk.data(), B, T, hid.data());
  EXPECT_NEAR(L0, loss_of(hid.data()), 1e-9 * std::fabs(L0) + 1e-12);
  // A few entries of every tensor.
  std::vector<size_t> idx;
  for (const auto& p : m.table().entries())
    for (size_t k = 0; k < std::min<size_t>(p.size, 2); ++k) idx.push_back(p.offset + (k * 7919) % p.size);
  auto num = mmtest::numeric_grad(m.params(), idx, [&] {
    m.forward_hidden(tk.data(), B, T, hid.data());
    return loss_of(hid.data());
  });
  int checked = 0;
  for (size_t i = 0; i < idx.size(); ++i) {
    const double a = m.grads()[idx[i]], n = num[i];
    EXPECT_NEAR(a, n, 1e-6 + 1e-5 * std::fabs(n)) << "parameter " << idx[i];
    checked += std::fabs(n) > 1e-8;
  }
  EXPECT_GT(checked, int(idx.size()) / 2);  // most entries carry gradient
}

TEST(Finetune, ForwardHiddenStreamsAndBatches) {
  mm::MemMamba<float>& m = *fixture().net;
  const int64_t D = m.config().d_model;
  std::mt19937_64 rng(9);
  const std::string a = mmtest::random_bases(70, rng), b = mmtest::random_bases(45, rng);
  // Whole pass of a, vs pieces.
  std::vector<int32_t> ta = {mm::io::tok::BOS};
  for (uint8_t x : mm::io::encode(a)) ta.push_back(x);
  const int64_t T = int64_t(ta.size());
  std::vector<float> whole(size_t(T * D)), pieces(size_t(T * D));
  m.forward_hidden(ta.data(), 1, T, whole.data());
  auto st = m.new_state(1);
  for (int64_t t0 = 0; t0 < T; t0 += 13) {
    const int64_t n = std::min<int64_t>(13, T - t0);
    m.forward_hidden(ta.data() + t0, 1, n, pieces.data() + t0 * D, &st);
  }
  for (size_t i = 0; i < whole.size(); ++i) ASSERT_NEAR(whole[i], pieces[i], 1e-5f * (1 + std::fabs(whole[i])));
  // The same rows as forward's last layer + norm_f.
  const auto v = whole_pass(m, a, false, true);
  for (int64_t k = 0; k < D; ++k) EXPECT_NEAR(whole[size_t((T - 1) * D + k)], v[size_t(k)], 1e-5);
  // Features of a padded batch (several examples, small pieces) equal independent whole passes.
  std::vector<Example> ex(2);
  ex[0].seq = a;
  ex[1].seq = b;
  for (bool both : {false, true})
    for (bool last : {false, true}) {
      FeatureSpec spec;
      spec.both_strands = both;
      spec.pool = last ? EmbedPool::last : EmbedPool::mean;
      FeatureRun run;
      run.piece = 17;
      const auto x = compute_features(&m, spec, ex, run, {});
      ASSERT_EQ(x.size(), size_t(2 * D));
      for (int e = 0; e < 2; ++e) {
        auto f = whole_pass(m, ex[size_t(e)].seq, false, last);
        if (both) {
          const auto r = whole_pass(m, ex[size_t(e)].seq, true, last);
          for (int64_t k = 0; k < D; ++k) f[size_t(k)] = 0.5 * (f[size_t(k)] + r[size_t(k)]);
        }
        for (int64_t k = 0; k < D; ++k)
          EXPECT_NEAR(x[size_t(e * D + k)], f[size_t(k)], 2e-5 * (1 + std::fabs(f[size_t(k)])))
              << "both " << both << " last " << last << " example " << e;
      }
    }
}

TEST(Finetune, VariantFeaturesAreEmbeddingDifferenceAndLlr) {
  mm::MemMamba<float>& m = *fixture().net;
  const int64_t D = m.config().d_model;
  std::mt19937_64 rng(4);
  std::vector<Example> ex(3);
  ex[0].window = {mmtest::random_bases(30, rng), "A", {"G"}, mmtest::random_bases(12, rng)};
  ex[1].window = {mmtest::random_bases(25, rng), "C", {"CTT"}, mmtest::random_bases(9, rng)};   // insertion
  ex[2].window = {mmtest::random_bases(8, rng), "GAT", {"G"}, mmtest::random_bases(20, rng)};   // deletion
  FeatureSpec spec;
  spec.input = InputKind::variant;
  FeatureRun run;
  run.piece = 11;
  const auto x = compute_features(&m, spec, ex, run, {});
  ASSERT_EQ(x.size(), size_t(3 * (D + 1)));
  for (int e = 0; e < 3; ++e) {
    const auto& w = ex[size_t(e)].window;
    const auto alt = whole_pass(m, w.upstream + w.alts[0] + w.downstream, false, false);
    const auto ref = whole_pass(m, w.upstream + w.ref + w.downstream, false, false);
    for (int64_t k = 0; k < D; ++k)
      EXPECT_NEAR(x[size_t(e * (D + 1) + k)], alt[size_t(k)] - ref[size_t(k)], 3e-5);
    const double llr = score_window(m, w, VepStrand::fwd).at(0);
    EXPECT_NEAR(x[size_t(e * (D + 1) + D)], llr, 1e-4 * (1 + std::fabs(llr)));
  }
  // k-mer variant features: frequency differences (each window's frequencies sum to 1).
  spec.kind = FeatureKind::kmer;
  spec.k = 2;
  const auto xk = compute_features(nullptr, spec, ex, run, {});
  ASSERT_EQ(xk.size(), size_t(3 * 16));
  double s = 0;
  for (int i = 0; i < 16; ++i) s += xk[size_t(i)];
  EXPECT_NEAR(s, 0.0, 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Metrics

TEST(Finetune, MetricsMatchHandComputedValues) {
  // Binary: y = 0 0 0 1 1 1; P(1) = .1 .6 .35 .8 .35 .9 -> predictions 0 1 0 1 0 1.
  const std::vector<int> y = {0, 0, 0, 1, 1, 1};
  const std::vector<float> p1 = {0.1f, 0.6f, 0.35f, 0.8f, 0.35f, 0.9f};
  std::vector<float> probs;
  for (float p : p1) {
    probs.push_back(1 - p);
    probs.push_back(p);
  }
  const Metrics m = evaluate_metrics(y, probs, 2);
  EXPECT_EQ(m.n, 6);
  EXPECT_NEAR(m.accuracy, 4.0 / 6.0, 1e-12);
  // tp 2, tn 2, fp 1, fn 1: MCC = (4 - 1) / sqrt(3·3·3·3) = 1/3; F1 of each class 2/3.
  EXPECT_NEAR(m.mcc, 1.0 / 3.0, 1e-12);
  EXPECT_NEAR(m.macro_f1, 2.0 / 3.0, 1e-12);
  // AUROC: positive/negative pairs 9; positive wins: .8 beats 3, .9 beats 3, .35 beats .1 and
  // ties .35 (half) -> 7.5 / 9.
  ASSERT_TRUE(m.auroc.has_value());
  EXPECT_NEAR(*m.auroc, 7.5 / 9.0, 1e-12);
  double loss = 0;
  for (size_t i = 0; i < y.size(); ++i) loss -= std::log(y[i] ? p1[i] : 1 - p1[i]);
  EXPECT_NEAR(m.loss, loss / 6, 1e-6);
  EXPECT_EQ(m.confusion[0][1], 1);
  EXPECT_EQ(m.confusion[1][0], 1);

  // Three classes: confusion [[2,1,0],[0,2,1],[1,0,1]] (rows true).
  std::vector<int> y3;
  std::vector<float> p3;
  const int conf[3][3] = {{2, 1, 0}, {0, 2, 1}, {1, 0, 1}};
  for (int t = 0; t < 3; ++t)
    for (int p = 0; p < 3; ++p)
      for (int k = 0; k < conf[t][p]; ++k) {
        y3.push_back(t);
        for (int c = 0; c < 3; ++c) p3.push_back(c == p ? 0.8f : 0.1f);
      }
  const Metrics m3 = evaluate_metrics(y3, p3, 3);
  EXPECT_NEAR(m3.accuracy, 5.0 / 8.0, 1e-12);
  // Gorodkin: c=5, s=8, t=(3,3,2), p=(3,3,2): (5·8 − 22) / sqrt((64 − 22)(64 − 22)) = 18/42.
  EXPECT_NEAR(m3.mcc, 18.0 / 42.0, 1e-12);
  // F1 per class: 2/3, 2/3, 1/2.
  EXPECT_NEAR(m3.macro_f1, (2.0 / 3 + 2.0 / 3 + 0.5) / 3, 1e-12);
  EXPECT_FALSE(m3.auroc.has_value());
}

// ---------------------------------------------------------------------------------------------
// End to end on sequences

TEST(Finetune, FrozenSequencesTrainClassifyMetrics) {
  Fixture& f = fixture();
  const fs::path out = f.dir / "frozen.safetensors", metrics = f.dir / "frozen.metrics.jsonl";
  auto r = run_cli("finetune -q --freeze --epochs 40 --valid-fraction 0.25 --metric mcc --patience 100 -m " + q(f.model) +
                   " -o " + q(out) + " " + q(f.train_tsv));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(fs::exists(out));
  const auto ml = lines_of(mmtest::read_text(metrics));
  ASSERT_EQ(ml.size(), 40u);
  int64_t best = 0;
  double best_mcc = -2;
  for (const auto& l : ml) {
    const auto j = nlohmann::json::parse(l);
    for (const char* k : {"epoch", "train_loss", "valid_loss", "valid_accuracy", "valid_mcc", "valid_macro_f1", "valid_auroc"})
      EXPECT_TRUE(j.contains(k)) << k;
    if (j["best"].get<bool>()) {
      EXPECT_GT(j["valid_mcc"].get<double>(), best_mcc);
      best_mcc = j["valid_mcc"];
      best = j["epoch"];
    }
  }
  const auto rec = metadata_json(out, "memmamba.finetune");
  EXPECT_EQ(rec["mode"], "frozen");
  EXPECT_EQ(rec["best_epoch"].get<int64_t>(), best);
  EXPECT_EQ(rec["train_counts"]["at"].get<int>() + rec["valid_counts"]["at"].get<int>(), 20);
  EXPECT_EQ(rec["valid_counts"]["gc"].get<int>(), 5);
  const auto cls = metadata_json(out, "memmamba.classifier");
  EXPECT_EQ(cls["labels"], nlohmann::json({"at", "gc"}));
  // The backbone is the base model's, unchanged.
  const auto c = load_classifier(out);
  EXPECT_EQ(c.backbone, f.net->params());
  // info describes it: labels, features, head, the backbone's config and counts, provenance.
  auto inf = run_cli("info " + q(out));
  ASSERT_EQ(inf.exit_code, 0) << inf.err;
  EXPECT_NE(inf.out.find("kind\tclassifier\n"), std::string::npos) << inf.out;
  EXPECT_NE(inf.out.find("labels\tat,gc\n"), std::string::npos) << inf.out;
  EXPECT_NE(inf.out.find("head\t2 classes x "), std::string::npos) << inf.out;
  EXPECT_NE(inf.out.find("parameters\t" + std::to_string(f.net->params().size()) + "\n"), std::string::npos) << inf.out;
  EXPECT_NE(inf.out.find("memmamba.command\tmemmamba finetune"), std::string::npos) << inf.out;
  const auto ij = nlohmann::json::parse(run_cli("info --json " + q(out)).out);
  EXPECT_EQ(ij["kind"], "classifier");
  EXPECT_EQ(ij["labels"], nlohmann::json({"at", "gc"}));
  EXPECT_EQ(ij["features"]["kind"], "backbone");
  EXPECT_EQ(ij["parameters"]["total"].get<size_t>(), f.net->params().size());

  const fs::path tsv = f.dir / "pred.tsv", mj = f.dir / "pred.json";
  r = run_cli("classify -q -m " + q(out) + " -o " + q(tsv) + " --metrics " + q(mj) + " " + q(f.test_fa));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto lines = lines_of(mmtest::read_text(tsv));
  ASSERT_EQ(lines.size(), 18u);
  EXPECT_EQ(lines[0].rfind("##memmamba classify: version=", 0), 0u);
  EXPECT_NE(lines[0].find("command=memmamba classify"), std::string::npos);
  EXPECT_EQ(lines[1], "id\tpredicted\tprob_at\tprob_gc");
  int correct = 0;
  for (size_t i = 2; i < lines.size(); ++i) {
    const auto fl = fields(lines[i]);
    ASSERT_EQ(fl.size(), 4u);
    EXPECT_EQ(fl[0], "t" + std::to_string(i - 2));
    const double pa = std::stod(fl[2]), pg = std::stod(fl[3]);
    EXPECT_NEAR(pa + pg, 1.0, 1e-5);
    EXPECT_EQ(fl[1], pa >= pg ? "at" : "gc");
    const std::string truth = (i - 2) % 3 == 0 ? "gc" : "at";
    correct += fl[1] == truth;
  }
  const auto mjs = nlohmann::json::parse(mmtest::read_text(mj));
  EXPECT_EQ(mjs["n"].get<int>(), 16);
  EXPECT_NEAR(mjs["accuracy"].get<double>(), correct / 16.0, 1e-12);  // agrees with the TSV
  EXPECT_GE(mjs["accuracy"].get<double>(), 0.75);  // GC content shows even in a random tiny model
  EXPECT_TRUE(mjs["auroc"].is_number());
  // Without --metrics the metrics go to stderr; TSV to stdout.
  r = run_cli("classify -m " + q(out) + " " + q(f.test_fa));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("metrics: n 16  accuracy"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("AUROC"), std::string::npos);
  EXPECT_EQ(lines_of(r.out).size(), 18u);
}

TEST(Finetune, FullFineTuningChangesTheBackbone) {
  Fixture& f = fixture();
  const fs::path out = f.dir / "full.safetensors";
  auto r = run_cli("finetune -q --epochs 1 --batch 8 --strand both --pool last --lr 0.001 --class-weights balanced -m " +
                   q(f.model) + " -o " + q(out) + " " + q(f.train_tsv));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto c = load_classifier(out);
  ASSERT_EQ(c.backbone.size(), f.net->params().size());
  double diff = 0;
  for (size_t i = 0; i < c.backbone.size(); ++i) diff = std::max(diff, double(std::fabs(c.backbone[i] - f.net->params()[i])));
  EXPECT_GT(diff, 1e-5);
  EXPECT_TRUE(c.spec.both_strands);
  EXPECT_EQ(c.spec.pool, EmbedPool::last);
  const auto rec = metadata_json(out, "memmamba.finetune");
  EXPECT_EQ(rec["mode"], "full");
  EXPECT_EQ(rec["probe_epochs"].get<int>(), 20);
  EXPECT_GT(rec["steps"].get<int>(), 0);
  EXPECT_EQ(rec["base_model"], f.model.string());
  r = run_cli("classify -q -m " + q(out) + " " + q(f.test_fa));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(lines_of(r.out).size(), 18u);
}

TEST(Finetune, KmerBaselineAndClassWeights) {
  Fixture& f = fixture();
  // Imbalanced training set from a FASTA: 12 'gc', 4 'at'.
  std::mt19937_64 rng(17);
  std::string fa;
  for (int i = 0; i < 16; ++i) {
    const bool gc = i % 4 != 0;
    fa += cat(">k", std::to_string(i), " ", gc ? "gc" : "at", "\n", biased(100, gc ? 0.8 : 0.2, rng), "\n");
  }
  const fs::path train = f.dir / "imbalanced.fa", out = f.dir / "kmer.safetensors";
  mmtest::write_text(train, fa);
  auto r = run_cli("finetune -q --baseline kmer --k 3 --valid-fraction 0 --class-weights balanced -o " + q(out) + " " + q(train));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rec = metadata_json(out, "memmamba.finetune");
  EXPECT_EQ(rec["mode"], "kmer-baseline");
  EXPECT_NEAR(rec["class_weights"]["at"].get<double>(), 16.0 / (2 * 4), 1e-12);
  EXPECT_NEAR(rec["class_weights"]["gc"].get<double>(), 16.0 / (2 * 12), 1e-12);
  EXPECT_EQ(rec["validation"], "none");
  EXPECT_EQ(rec["epochs_run"].get<int>(), 100);
  const auto c = load_classifier(out);
  EXPECT_FALSE(c.has_backbone);
  EXPECT_EQ(c.head.F, 64);
  auto inf = run_cli("info " + q(out));  // no backbone: no config or parameter lines
  ASSERT_EQ(inf.exit_code, 0) << inf.err;
  EXPECT_NE(inf.out.find("head\t2 classes x 64 features\n"), std::string::npos) << inf.out;
  EXPECT_EQ(inf.out.find("config\t"), std::string::npos) << inf.out;
  const fs::path mj = f.dir / "kmer.json";
  r = run_cli("classify -q -m " + q(out) + " --metrics " + q(mj) + " -o " + q(f.dir / "kmer.tsv") + " " + q(f.test_fa));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GE(nlohmann::json::parse(mmtest::read_text(mj))["accuracy"].get<double>(), 0.9);
  // Given weights.
  r = run_cli("finetune -q --baseline kmer --k 2 --class-weights at:3,gc:0.5 -o " + q(out) + " " + q(train));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NEAR(metadata_json(out, "memmamba.finetune")["class_weights"]["at"].get<double>(), 3.0, 1e-12);
}

TEST(Finetune, EarlyStoppingKeepsTheBestEpoch) {
  Fixture& f = fixture();
  const fs::path out = f.dir / "early.safetensors", valid = f.dir / "valid.tsv";
  // A validation file whose labels contradict the training data: the validation loss rises as the
  // head learns, so training stops after --patience epochs and keeps the first epoch.
  std::mt19937_64 rng(8);
  std::string v;
  for (int i = 0; i < 8; ++i)
    v += cat("v", std::to_string(i), "\t", biased(80, i % 2 ? 0.8 : 0.2, rng), "\t", i % 2 ? "at" : "gc", "\n");
  mmtest::write_text(valid, v);
  auto r = run_cli("finetune -q --baseline kmer --k 2 --epochs 50 --patience 3 --head-lr 0.01 --valid " + q(valid) +
                   " -o " + q(out) + " " + q(f.train_tsv));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rec = metadata_json(out, "memmamba.finetune");
  EXPECT_TRUE(rec["stopped_early"].get<bool>());
  EXPECT_EQ(rec["best_epoch"].get<int>(), 1);
  EXPECT_EQ(rec["epochs_run"].get<int>(), 4);
  EXPECT_EQ(lines_of(mmtest::read_text(f.dir / "early.metrics.jsonl")).size(), 4u);
  EXPECT_EQ(rec["validation"], "file " + valid.string());
}

// ---------------------------------------------------------------------------------------------
// Inputs

TEST(Finetune, ReadsBedWithReferenceAndTsvAndFastaLabels) {
  Fixture& f = fixture();
  const fs::path bed = f.dir / "regions.bed";
  mmtest::write_text(bed, "# comment\nchrT\t0\t100\tr1\tup\nchrT\t100\t250\tr2\tdown\n");
  LabelledOptions o;
  o.path = bed.string();
  o.format = LabelledFormat::bed;
  o.reference = f.ref.string();
  o.label_column = 5;
  auto set = read_labelled(o, true, {});
  ASSERT_EQ(set.examples.size(), 2u);
  EXPECT_EQ(set.examples[0].id, "r1");
  EXPECT_EQ(set.examples[0].label, "up");
  EXPECT_EQ(set.examples[1].seq.size(), 150u);
  EXPECT_EQ(set.examples[1].line, 3);
  o.label_column = 4;
  set = read_labelled(o, true, {});
  EXPECT_EQ(set.examples[0].id, "chrT:1-100");
  EXPECT_EQ(set.examples[0].label, "r1");
  o.label_column = 7;
  EXPECT_THROW(read_labelled(o, true, {}), mm::Error);  // no such column: a missing label
  EXPECT_EQ(read_labelled(o, false, {}).examples[0].label, "");
  // TSV: the header line is skipped, labels optional for classify.
  o = {};
  o.path = f.train_tsv.string();
  o.format = LabelledFormat::tsv;
  set = read_labelled(o, true, {});
  ASSERT_EQ(set.examples.size(), 40u);
  EXPECT_EQ(set.examples[0].line, 2);
  // Formats from names.
  EXPECT_EQ(labelled_format_from_name("a.fa.gz"), LabelledFormat::fasta);
  EXPECT_EQ(labelled_format_from_name("a.tsv"), LabelledFormat::tsv);
  EXPECT_EQ(labelled_format_from_name("a.bed.gz"), LabelledFormat::bed);
  EXPECT_EQ(labelled_format_from_name("a.vcf.gz"), LabelledFormat::vcf);
  EXPECT_EQ(labelled_format_from_name("a.bcf"), LabelledFormat::vcf);
  EXPECT_FALSE(labelled_format_from_name("a.xyz").has_value());
}

// ---------------------------------------------------------------------------------------------
// End to end on a labelled VCF

TEST(Finetune, LabelledVcfTrainClassifyWriteBack) {
  Fixture& f = fixture();
  LabelledOptions o;
  o.path = f.vcf.string();
  o.format = LabelledFormat::vcf;
  o.reference = f.ref.string();
  o.label_key = "LAB";
  o.upstream = 40;  // the windows the classifier below is trained with
  o.downstream = 10;
  const auto set = read_labelled(o, true, {});
  EXPECT_EQ(set.examples.size(), 50u);  // 48 SNVs + 2 ALTs of the multi-allelic record
  EXPECT_EQ(set.records_skipped, 3);    // symbolic, REF mismatch, unknown contig

  const fs::path out = f.dir / "vcf.safetensors";
  auto r = run_cli("finetune -q --freeze --epochs 30 --upstream 40 --downstream 10 --label-key LAB -f " + q(f.ref) +
                   " -m " + q(f.model) + " -o " + q(out) + " " + q(f.vcf));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto c = load_classifier(out);
  EXPECT_EQ(c.spec.input, InputKind::variant);
  EXPECT_EQ(c.spec.upstream, 40);
  EXPECT_EQ(c.head.F, tiny_config().d_model + 1);
  EXPECT_EQ(c.labels, (std::vector<std::string>{"gain", "loss"}));

  const fs::path vout = f.dir / "classified.vcf", mj = f.dir / "vcf.json";
  r = run_cli("classify -q --label-key LAB -f " + q(f.ref) + " -m " + q(out) + " --metrics " + q(mj) + " -o " + q(vout) +
              " " + q(f.vcf));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string text = mmtest::read_text(vout);
  EXPECT_NE(text.find("##INFO=<ID=MM_PROB,Number=A,Type=Float"), std::string::npos);
  EXPECT_NE(text.find("##INFO=<ID=MM_CLASS,Number=A,Type=String"), std::string::npos);
  EXPECT_NE(text.find("##memmamba_classify="), std::string::npos);
  // Every record kept, in order; MM_PROB the probability of 'loss' (the second label).
  const auto probs = classify_probs(c, nullptr, {}, {}, {});
  EXPECT_TRUE(probs.empty());
  mm::MemMamba<float> net(c.config, c.backbone);
  const auto expect = classify_probs(c, &net, set.examples, {}, {});
  std::vector<std::string> records;
  for (const auto& l : lines_of(text))
    if (!l.empty() && l[0] != '#') records.push_back(l);
  ASSERT_EQ(records.size(), 52u);
  size_t ex = 0;
  for (size_t i = 0; i < 48; ++i) {
    const auto fl = fields(records[i]);
    EXPECT_EQ(fl[2], "v" + std::to_string(i));
    const auto info = fl[7];
    const auto pp = info.find("MM_PROB=");
    ASSERT_NE(pp, std::string::npos) << info;
    const double p = std::stod(info.substr(pp + 8));
    EXPECT_NEAR(p, expect[ex * 2 + 1], 1e-5);
    const std::string cls = expect[ex * 2 + 1] > expect[ex * 2] ? "loss" : "gain";
    EXPECT_NE(info.find("MM_CLASS=" + cls), std::string::npos);
    ++ex;
  }
  EXPECT_NE(records[48].find("MM_CLASS="), std::string::npos);  // multi-allelic: two values
  EXPECT_NE(records[49].find("MM_CLASS_SKIP=symbolic"), std::string::npos);
  EXPECT_NE(records[50].find("MM_CLASS_SKIP=ref_mismatch"), std::string::npos);
  EXPECT_NE(records[51].find("MM_CLASS_SKIP=contig_missing"), std::string::npos);
  const auto mjs = nlohmann::json::parse(mmtest::read_text(mj));
  EXPECT_EQ(mjs["n"].get<int>(), 50);
  EXPECT_TRUE(mjs["auroc"].is_number());

  // Full fine-tuning on variants (the LLR feature recomputed per epoch, without gradient).
  const fs::path full = f.dir / "vcf-full.safetensors";
  r = run_cli("finetune -q --epochs 1 --batch 16 --lr 0.001 --upstream 20 --downstream 8 --label-key LAB -f " + q(f.ref) +
              " -m " + q(f.model) + " -o " + q(full) + " " + q(f.vcf));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto cf = load_classifier(full);
  EXPECT_NE(cf.backbone, f.net->params());
  EXPECT_EQ(metadata_json(full, "memmamba.finetune")["mode"], "full");
  r = run_cli("classify -q -f " + q(f.ref) + " -m " + q(full) + " -O z -o " + q(f.dir / "full.vcf.gz") + " " + q(f.vcf));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(mmtest::shell("bcftools view -H '" + (f.dir / "full.vcf.gz").string() + "' | grep -c MM_CLASS="), "49\n");

  // A sequence classifier refuses a VCF, and the reverse.
  const fs::path seqcls = f.dir / "seq-kmer.safetensors";
  ASSERT_EQ(run_cli("finetune -q --baseline kmer --k 2 -o " + q(seqcls) + " " + q(f.train_tsv)).exit_code, 0);
  r = run_cli("classify -q -f " + q(f.ref) + " -m " + q(seqcls) + " " + q(f.vcf));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("trained on sequences"), std::string::npos) << r.err;
  r = run_cli("classify -q -m " + q(out) + " " + q(f.test_fa));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("trained on variants"), std::string::npos) << r.err;
}

// ---------------------------------------------------------------------------------------------
// Bad input

TEST(Finetune, BadInput) {
  Fixture& f = fixture();
  const fs::path out = f.dir / "bad.safetensors";
  auto expect_error = [&](const std::string& args, int code, const std::string& what) {
    const auto r = run_cli(args);
    EXPECT_EQ(r.exit_code, code) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(what), std::string::npos) << args << "\n" << r.err;
  };
  // A single class.
  const fs::path one = f.dir / "one.tsv";
  mmtest::write_text(one, "a\tACGTACGTAA\tx\nb\tACGTTTGTAA\tx\n");
  expect_error("finetune -q --baseline kmer -o " + q(out) + " " + q(one), 1, "single class ('x')");
  EXPECT_FALSE(fs::exists(out));
  // Empty sequences: a FASTA record without bases, a TSV line with an empty sequence.
  const fs::path empty_fa = f.dir / "empty.fa", empty_tsv = f.dir / "empty.tsv";
  mmtest::write_text(empty_fa, ">a x\nACGT\n>b y\n>c x\nAAAA\n");
  expect_error("finetune -q --baseline kmer -o " + q(out) + " " + q(empty_fa), 1, "empty.fa:3: record 'b' has no sequence");
  mmtest::write_text(empty_tsv, "a\tACGT\tx\nb\t\ty\n");
  expect_error("finetune -q --baseline kmer -o " + q(out) + " " + q(empty_tsv), 1, "empty.tsv:2: sequence 'b' is empty");
  // Labels with spaces or tabs.
  const fs::path sp = f.dir / "space.fa", tab = f.dir / "tab.tsv";
  mmtest::write_text(sp, ">a x\nACGT\n>b two words\nACGA\n");
  expect_error("finetune -q --baseline kmer -o " + q(out) + " " + q(sp), 1, "space.fa:3: label 'two words' holds white space");
  mmtest::write_text(tab, "a\tACGT\tx\nb\tACGA\ty\tz\n");
  expect_error("finetune -q --baseline kmer -o " + q(out) + " " + q(tab), 1, "tab.tsv:2: line has 4 tab-separated fields");
  const fs::path spt = f.dir / "space.tsv";
  mmtest::write_text(spt, "a\tACGT\tx\nb\tACGA\ty z\n");
  expect_error("finetune -q --baseline kmer -o " + q(out) + " " + q(spt), 1, "label 'y z' holds white space");
  EXPECT_FALSE(fs::exists(out));
  // Unknown labels in classify.
  const fs::path kmer = f.dir / "bad-kmer.safetensors";
  ASSERT_EQ(run_cli("finetune -q --baseline kmer --k 2 -o " + q(kmer) + " " + q(f.train_tsv)).exit_code, 0);
  const fs::path unk = f.dir / "unknown.fa", pred = f.dir / "unknown.tsv";
  mmtest::write_text(unk, ">a gc\nGGCC\n>b weird\nACGT\n");
  expect_error("classify -q -m " + q(kmer) + " -o " + q(pred) + " " + q(unk), 1,
               "unknown.fa:3: label 'weird' is not one the classifier knows (at, gc)");
  EXPECT_FALSE(fs::exists(pred));  // no partial output
  // A pretrained model is not a classifier.
  expect_error("classify -q -m " + q(f.model) + " " + q(f.test_fa), 1, "without a classification head");
  // Head/backbone mismatch: a classifier whose head was written for another width.
  {
    const fs::path good = f.dir / "frozen-for-mismatch.safetensors";
    ASSERT_EQ(run_cli("finetune -q --freeze --epochs 2 -m " + q(f.model) + " -o " + q(good) + " " + q(f.train_tsv)).exit_code, 0);
    const auto src = mm::io::SafetensorsFile::read(good);
    mm::io::SafetensorsWriter w;
    for (const auto& name : src.names()) {
      auto v = src.as_f32(name);
      auto shape = src.info(name).shape;
      if (name == "head.weight") {
        shape[1] += 3;
        v.resize(size_t(shape[0] * shape[1]), 0.0f);
      }
      w.add(name, shape, std::span<const float>(v));
    }
    for (const auto& [k, v] : src.metadata()) w.set_metadata(k, v);
    const fs::path bad = f.dir / "mismatch.safetensors";
    w.write(bad);
    expect_error("classify -q -m " + q(bad) + " " + q(f.test_fa), 1, "head/backbone mismatch: tensor 'head.weight' has shape");
  }
  // Usage: a VCF without --label-key, no -m for classify, a bad metric.
  expect_error("finetune -q --freeze -f " + q(f.ref) + " -m " + q(f.model) + " -o " + q(out) + " " + q(f.vcf), 2, "--label-key");
  expect_error("classify -q " + q(f.test_fa), 2, "give the classifier with -m");
  expect_error("finetune -q --baseline kmer --metric nope -o " + q(out) + " " + q(f.train_tsv), 2, "--metric wants");
  // A label key the VCF does not declare.
  expect_error("finetune -q --freeze --label-key NOPE -f " + q(f.ref) + " -m " + q(f.model) + " -o " + q(out) + " " + q(f.vcf),
               1, "--label-key NOPE: the header declares no INFO field");
}
