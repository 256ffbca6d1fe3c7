// gboost C ABI example: load an engine from a JSON config, run solve and generate calls
// concurrently from several threads, print one JSON line per call, free everything.
//
//   gboost_example CONFIG [--question TEXT] [--prompt TEXT] [--params JSON] [--overrides JSON]
//                         [--solve N] [--generate N] [--python PATH]
//
// CONFIG is a JSON object (see gboost.h, gboost_engine_create) or @file. Each of the N solve
// and N generate calls (default 1 each) runs in its own std::thread, all on one engine handle.
// Output lines: {"call": "solve"|"generate", "index": i, "ok": true, "result": {...}}
//           or  {"call": ..., "ok": false, "error": "..."}.
// Exit status: 0 all calls succeeded, 1 some call failed, 2 usage / init / engine creation error.
#include "gboost.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

std::mutex out_mu;

std::string json_escape(const std::string& s) {
    std::string o = "\"";
    for (unsigned char c : s) {
        switch (c) {
        case '"': o += "\\\""; break;
        case '\\': o += "\\\\"; break;
        case '\n': o += "\\n"; break;
        case '\r': o += "\\r"; break;
        case '\t': o += "\\t"; break;
        default:
            if (c < 0x20) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", c);
                o += buf;
            } else {
                o += static_cast<char>(c);
            }
        }
    }
    return o + "\"";
}

// Takes ownership of result / error (both from the library) and frees them.
void report(const char* call, int index, char* result, char* error) {
    std::string line = std::string("{\"call\": \"") + call + "\", \"index\": " + std::to_string(index);
    if (result)
        line += std::string(", \"ok\": true, \"result\": ") + result + "}";
    else
        line += ", \"ok\": false, \"error\": " + json_escape(error ? error : "(no message)") + "}";
    gboost_string_free(result);
    gboost_string_free(error);
    std::lock_guard<std::mutex> lock(out_mu);
    std::cout << line << std::endl;
}

std::string read_arg(const std::string& a) {
    if (a.empty() || a[0] != '@') return a;
    std::ifstream f(a.substr(1));
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

int usage() {
    std::cerr << "usage: gboost_example CONFIG_JSON|@file [--question TEXT] [--prompt TEXT] [--params JSON]\n"
                 "                      [--overrides JSON] [--solve N] [--generate N] [--python PATH]\n";
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) return usage();
    std::string config = read_arg(argv[1]);
    std::string question = "What is 2 + 3?", prompt = "Step 1:", params, overrides, python;
    int n_solve = 1, n_generate = 1;
    for (int i = 2; i < argc; ++i) {
        std::string k = argv[i];
        if (i + 1 >= argc) return usage();
        std::string v = argv[++i];
        if (k == "--question") question = v;
        else if (k == "--prompt") prompt = v;
        else if (k == "--params") params = read_arg(v);
        else if (k == "--overrides") overrides = read_arg(v);
        else if (k == "--solve") n_solve = std::stoi(v);
        else if (k == "--generate") n_generate = std::stoi(v);
        else if (k == "--python") python = v;
        else return usage();
    }

    gboost_status st = gboost_init(python.empty() ? nullptr : python.c_str());
    if (st != GBOOST_OK) {
        const char* why = gboost_init_error();
        std::cout << "{\"call\": \"init\", \"ok\": false, \"status\": " << static_cast<int>(st)
                  << ", \"error\": " << json_escape(why ? why : gboost_status_string(st)) << "}" << std::endl;
        return 2;
    }
    std::cout << "{\"call\": \"init\", \"ok\": true, \"version\": " << json_escape(gboost_version()) << "}"
              << std::endl;

    char* err = nullptr;
    gboost_engine* eng = gboost_engine_create(config.c_str(), &err);
    if (!eng) {
        report("create", 0, nullptr, err);
        gboost_shutdown();
        return 2;
    }
    report("create", 0, gboost_engine_info(eng, &err), err);

    std::vector<std::thread> threads;
    std::vector<int> ok(n_solve + n_generate, 0);
    const char* p = params.empty() ? nullptr : params.c_str();
    const char* o = overrides.empty() ? nullptr : overrides.c_str();
    for (int i = 0; i < n_solve; ++i)
        threads.emplace_back([&, i] {
            char* e = nullptr;
            char* r = gboost_solve(eng, question.c_str(), o, &e);
            ok[i] = r != nullptr;
            report("solve", i, r, e);
        });
    for (int i = 0; i < n_generate; ++i)
        threads.emplace_back([&, i] {
            char* e = nullptr;
            char* r = gboost_generate(eng, prompt.c_str(), p, &e);
            ok[n_solve + i] = r != nullptr;
            report("generate", i, r, e);
        });
    for (auto& t : threads) t.join();

    gboost_engine_free(eng);
    gboost_shutdown();
    for (int v : ok)
        if (!v) return 1;
    return 0;
}
