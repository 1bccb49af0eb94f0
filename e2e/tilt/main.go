// tiltcheck evaluates the repository's Tiltfile without Tilt: a Starlark interpreter with
// recording stand-ins for the Tilt builtins the Tiltfile uses (same parameter names as
// Tilt's, so a misspelt keyword fails here as it would in Tilt). Then it checks what Tilt
// would need: every file, Dockerfile, chart and example the Tiltfile names exists, the
// helm() chart renders with the real `helm template`, every image built is used by a
// deployed object, every k8s_resource names a workload, no object is deployed twice, and a
// kube context that is not local is refused.
//
//	tiltcheck -repo DIR -helm HELM [-context NAME]     check the Tiltfile
//	tiltcheck manifests [-admin-port NAME] < YAML      parse rendered manifests (see e2e/chart)
//
// Exits 1 with one line per problem.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"go.starlark.net/syntax"
	"gopkg.in/yaml.v3"
)

// Tilt's own Starlark dialect (internal/tiltfile/starkit/environment.go).
var fileOptions = &syntax.FileOptions{Set: true, GlobalReassign: true, Recursion: true, TopLevelControl: true, While: true}

// Contexts Tilt allows without allow_k8s_contexts (docs of allow_k8s_contexts).
var tiltLocalContext = regexp.MustCompile(`^(minikube|docker-desktop|docker-for-desktop|microk8s|crc-.*|kind-.*|k3d-.*|krucible-.*)$`)

type build struct {
	builtin, ref, context, dockerfile, command, tag string
	deps                                            []string
}

type resource struct {
	workload     string
	portForwards []string
	resourceDeps []string
}

type kind struct{ kind, apiVersion, imageJSONPath string }

// What one evaluation recorded.
type recording struct {
	repo, context string
	env           map[string]string
	allowed       []string
	builds        []build
	objects       []map[string]any
	resources     []resource
	kinds         []kind
	paths         map[string]string // path -> which builtin named it
	helmRuns      []string
	helm          string
	problems      []string
}

func (r *recording) problem(format string, args ...any) {
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

// path records a repository path the Tiltfile names and returns it absolute.
func (r *recording) path(p, by string) string {
	if _, seen := r.paths[p]; !seen {
		r.paths[p] = by
	}
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(r.repo, p)
}

// blob is Tilt's Blob: text that k8s_yaml deploys and str() returns.
type blob struct{ text, source string }

func (b blob) String() string        { return b.text }
func (b blob) Type() string          { return "blob" }
func (b blob) Freeze()               {}
func (b blob) Truth() starlark.Bool  { return len(b.text) > 0 }
func (b blob) Hash() (uint32, error) { return starlark.String(b.text).Hash() }

func stringList(v starlark.Value) ([]string, error) {
	switch v := v.(type) {
	case nil, starlark.NoneType:
		return nil, nil
	case starlark.String:
		return []string{string(v)}, nil
	case *starlark.List:
		out := []string{}
		for i := 0; i < v.Len(); i++ {
			s, ok := starlark.AsString(v.Index(i))
			if !ok {
				return nil, fmt.Errorf("want a list of strings, got %s", v.Index(i).Type())
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, fmt.Errorf("want a string or a list of strings, got %s", v.Type())
}

func toStarlark(v any) (starlark.Value, error) {
	switch v := v.(type) {
	case nil:
		return starlark.None, nil
	case string:
		return starlark.String(v), nil
	case bool:
		return starlark.Bool(v), nil
	case int:
		return starlark.MakeInt(v), nil
	case float64:
		return starlark.Float(v), nil
	case []any:
		out := []starlark.Value{}
		for _, e := range v {
			sv, err := toStarlark(e)
			if err != nil {
				return nil, err
			}
			out = append(out, sv)
		}
		return starlark.NewList(out), nil
	case map[string]any:
		d := starlark.NewDict(len(v))
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			sv, err := toStarlark(v[k])
			if err != nil {
				return nil, err
			}
			if err := d.SetKey(starlark.String(k), sv); err != nil {
				return nil, err
			}
		}
		return d, nil
	}
	return nil, fmt.Errorf("cannot convert %T", v)
}

func fromStarlark(v starlark.Value) (any, error) {
	switch v := v.(type) {
	case starlark.NoneType:
		return nil, nil
	case starlark.String:
		return string(v), nil
	case starlark.Bool:
		return bool(v), nil
	case starlark.Int:
		i, ok := v.Int64()
		if !ok {
			return nil, fmt.Errorf("integer out of range")
		}
		return i, nil
	case starlark.Float:
		return float64(v), nil
	case *starlark.List:
		out := []any{}
		for i := 0; i < v.Len(); i++ {
			e, err := fromStarlark(v.Index(i))
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
		return out, nil
	case *starlark.Dict:
		out := map[string]any{}
		for _, item := range v.Items() {
			k, ok := starlark.AsString(item[0])
			if !ok {
				return nil, fmt.Errorf("non-string key %s", item[0])
			}
			e, err := fromStarlark(item[1])
			if err != nil {
				return nil, err
			}
			out[k] = e
		}
		return out, nil
	}
	return nil, fmt.Errorf("cannot encode %s", v.Type())
}

// parseDocs splits multi-document YAML into its objects (empty documents dropped).
func parseDocs(text string) ([]map[string]any, error) {
	dec := yaml.NewDecoder(strings.NewReader(text))
	var out []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if doc != nil {
			out = append(out, doc)
		}
	}
}

func str(obj map[string]any, path ...string) string {
	var cur any = obj
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return ""
		}
		cur = m[p]
	}
	s, _ := cur.(string)
	return s
}

var clusterScoped = map[string]bool{"CustomResourceDefinition": true, "Namespace": true, "ClusterRole": true,
	"ClusterRoleBinding": true, "PriorityClass": true, "StorageClass": true, "PersistentVolume": true,
	"ValidatingWebhookConfiguration": true, "MutatingWebhookConfiguration": true, "APIService": true}

// objectID is kind namespace/name; Tilt puts a namespace on cluster-scoped objects too, which
// the apiserver ignores, so it is left out for them.
func objectID(o map[string]any) string {
	if clusterScoped[str(o, "kind")] {
		return fmt.Sprintf("%s %s", str(o, "kind"), str(o, "metadata", "name"))
	}
	return fmt.Sprintf("%s %s/%s", str(o, "kind"), str(o, "metadata", "namespace"), str(o, "metadata", "name"))
}

func (r *recording) deploy(text, source string) error {
	docs, err := parseDocs(text)
	if err != nil {
		return fmt.Errorf("k8s_yaml(%s): not YAML: %v", source, err)
	}
	for _, d := range docs {
		if str(d, "apiVersion") == "" || str(d, "kind") == "" || str(d, "metadata", "name") == "" {
			return fmt.Errorf("k8s_yaml(%s): an object without apiVersion, kind or metadata.name", source)
		}
		d["__source"] = source
		r.objects = append(r.objects, d)
	}
	return nil
}

func (r *recording) builtins() starlark.StringDict {
	fn := func(name string, f func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error)) *starlark.Builtin {
		return starlark.NewBuiltin(name, f)
	}
	defined := map[string]bool{}
	args := map[string]string{}
	config := &starlarkstruct.Module{Name: "config", Members: starlark.StringDict{
		"define_string": fn("config.define_string", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var name, usage string
			var isArgs bool
			if err := starlark.UnpackArgs(b.Name(), a, kw, "name", &name, "args?", &isArgs, "usage?", &usage); err != nil {
				return nil, err
			}
			defined[name] = true
			return starlark.None, nil
		}),
		"define_bool": fn("config.define_bool", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var name, usage string
			var isArgs bool
			if err := starlark.UnpackArgs(b.Name(), a, kw, "name", &name, "args?", &isArgs, "usage?", &usage); err != nil {
				return nil, err
			}
			defined[name] = true
			return starlark.None, nil
		}),
		"parse": fn("config.parse", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			if err := starlark.UnpackArgs(b.Name(), a, kw); err != nil {
				return nil, err
			}
			d := starlark.NewDict(len(args))
			for k, v := range args {
				if !defined[k] {
					return nil, fmt.Errorf("config.parse: argument %q is not defined", k)
				}
				_ = d.SetKey(starlark.String(k), starlark.String(v))
			}
			return d, nil
		}),
	}}
	osModule := &starlarkstruct.Module{Name: "os", Members: starlark.StringDict{
		"getenv": fn("os.getenv", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var key string
			var def starlark.Value = starlark.None
			if err := starlark.UnpackArgs(b.Name(), a, kw, "key", &key, "default?", &def); err != nil {
				return nil, err
			}
			if v, ok := r.env[key]; ok {
				return starlark.String(v), nil
			}
			return def, nil
		}),
	}}
	return starlark.StringDict{
		"config": config,
		"os":     osModule,
		"fail": fn("fail", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var msg string
			if err := starlark.UnpackArgs(b.Name(), a, kw, "msg", &msg); err != nil {
				return nil, err
			}
			return nil, errors.New(msg)
		}),
		"k8s_context": fn("k8s_context", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			if err := starlark.UnpackArgs(b.Name(), a, kw); err != nil {
				return nil, err
			}
			return starlark.String(r.context), nil
		}),
		"allow_k8s_contexts": fn("allow_k8s_contexts", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var v starlark.Value
			if err := starlark.UnpackArgs(b.Name(), a, kw, "contexts", &v); err != nil {
				return nil, err
			}
			l, err := stringList(v)
			if err != nil {
				return nil, fmt.Errorf("allow_k8s_contexts: %v", err)
			}
			r.allowed = append(r.allowed, l...)
			return starlark.None, nil
		}),
		"custom_build": fn("custom_build", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var ref, tag, outputsTo, dir string
			var command, deps, ignore, entrypoint, commandBat, imageDeps, liveUpdate starlark.Value
			var commandBatVal string
			var disablePush, skipsLocalDocker, matchInEnv bool
			var env *starlark.Dict
			if err := starlark.UnpackArgs(b.Name(), a, kw, "ref", &ref, "command", &command, "deps", &deps,
				"tag?", &tag, "disable_push?", &disablePush, "skips_local_docker?", &skipsLocalDocker,
				"live_update?", &liveUpdate, "match_in_env_vars?", &matchInEnv, "ignore?", &ignore,
				"entrypoint?", &entrypoint, "command_bat_val?", &commandBatVal, "outputs_image_ref_to?", &outputsTo,
				"command_bat?", &commandBat, "image_deps?", &imageDeps, "env?", &env, "dir?", &dir); err != nil {
				return nil, err
			}
			cmd, err := stringList(command)
			if err != nil {
				return nil, fmt.Errorf("custom_build command: %v", err)
			}
			d, err := stringList(deps)
			if err != nil {
				return nil, fmt.Errorf("custom_build deps: %v", err)
			}
			for _, p := range d {
				r.path(p, "custom_build("+ref+") deps")
			}
			r.builds = append(r.builds, build{builtin: "custom_build", ref: ref, command: strings.Join(cmd, " "), tag: tag, deps: d})
			return starlark.None, nil
		}),
		"docker_build": fn("docker_build", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var ref, context, dockerfile, target, network, platform string
			var dockerfileContents, liveUpdate, ignore, only, entrypoint, ssh, secret, extraTag, containerArgs, cacheFrom, extraHosts starlark.Value
			var buildArgs *starlark.Dict
			var matchInEnv, pull bool
			if err := starlark.UnpackArgs(b.Name(), a, kw, "ref", &ref, "context", &context, "build_args?", &buildArgs,
				"dockerfile?", &dockerfile, "dockerfile_contents?", &dockerfileContents, "live_update?", &liveUpdate,
				"match_in_env_vars?", &matchInEnv, "ignore?", &ignore, "only?", &only, "entrypoint?", &entrypoint,
				"target?", &target, "ssh?", &ssh, "network?", &network, "secret?", &secret, "extra_tag?", &extraTag,
				"container_args?", &containerArgs, "cache_from?", &cacheFrom, "pull?", &pull, "platform?", &platform,
				"extra_hosts?", &extraHosts); err != nil {
				return nil, err
			}
			if dockerfile == "" {
				dockerfile = filepath.Join(context, "Dockerfile")
			}
			r.path(context, "docker_build("+ref+") context")
			r.path(dockerfile, "docker_build("+ref+") dockerfile")
			r.builds = append(r.builds, build{builtin: "docker_build", ref: ref, context: context, dockerfile: dockerfile})
			return starlark.None, nil
		}),
		"read_file": fn("read_file", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var p string
			var def starlark.Value
			if err := starlark.UnpackArgs(b.Name(), a, kw, "file_path", &p, "default?", &def); err != nil {
				return nil, err
			}
			data, err := os.ReadFile(r.path(p, "read_file"))
			if err != nil {
				return nil, fmt.Errorf("read_file: %v", err)
			}
			return blob{string(data), p}, nil
		}),
		"read_yaml": fn("read_yaml", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var p string
			var def starlark.Value
			if err := starlark.UnpackArgs(b.Name(), a, kw, "path", &p, "default?", &def); err != nil {
				return nil, err
			}
			data, err := os.ReadFile(r.path(p, "read_yaml"))
			if err != nil {
				return nil, fmt.Errorf("read_yaml: %v", err)
			}
			var v any
			if err := yaml.Unmarshal(data, &v); err != nil {
				return nil, fmt.Errorf("read_yaml(%s): %v", p, err)
			}
			return toStarlark(v)
		}),
		"encode_yaml": fn("encode_yaml", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var obj starlark.Value
			if err := starlark.UnpackArgs(b.Name(), a, kw, "obj", &obj); err != nil {
				return nil, err
			}
			v, err := fromStarlark(obj)
			if err != nil {
				return nil, fmt.Errorf("encode_yaml: %v", err)
			}
			out, err := yaml.Marshal(v)
			if err != nil {
				return nil, fmt.Errorf("encode_yaml: %v", err)
			}
			return blob{string(out), "encode_yaml"}, nil
		}),
		"blob": fn("blob", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var s string
			if err := starlark.UnpackArgs(b.Name(), a, kw, "contents", &s); err != nil {
				return nil, err
			}
			return blob{s, "blob"}, nil
		}),
		"helm": fn("helm", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var chart, name, namespace, kubeVersion string
			var values, set starlark.Value
			var skipCRDs bool
			if err := starlark.UnpackArgs(b.Name(), a, kw, "paths", &chart, "name?", &name, "namespace?", &namespace,
				"values?", &values, "set?", &set, "kube_version?", &kubeVersion, "skip_crds?", &skipCRDs); err != nil {
				return nil, err
			}
			if name == "" {
				name = "chart"
			}
			if info, err := os.Stat(r.path(chart, "helm")); err != nil || !info.IsDir() {
				return nil, fmt.Errorf("helm(): chart directory %q does not exist", chart)
			}
			// What Tilt runs (internal/tiltfile/files.go).
			cmd := []string{"template", name, chart}
			if namespace != "" {
				cmd = append(cmd, "--namespace", namespace)
			}
			if kubeVersion != "" {
				cmd = append(cmd, "--kube-version", kubeVersion)
			}
			if !skipCRDs {
				cmd = append(cmd, "--include-crds")
			}
			vs, err := stringList(values)
			if err != nil {
				return nil, fmt.Errorf("helm values: %v", err)
			}
			for _, v := range vs {
				r.path(v, "helm values")
				cmd = append(cmd, "--values", v)
			}
			ss, err := stringList(set)
			if err != nil {
				return nil, fmt.Errorf("helm set: %v", err)
			}
			for _, s := range ss {
				cmd = append(cmd, "--set", s)
			}
			c := exec.Command(r.helm, cmd...)
			c.Dir = r.repo
			var stdout, stderr bytes.Buffer
			c.Stdout, c.Stderr = &stdout, &stderr
			r.helmRuns = append(r.helmRuns, "helm "+strings.Join(cmd, " "))
			if err := c.Run(); err != nil {
				return nil, fmt.Errorf("helm(): `helm %s` failed: %v: %s", strings.Join(cmd, " "), err, stderr.String())
			}
			docs, err := parseDocs(stdout.String())
			if err != nil {
				return nil, fmt.Errorf("helm(): output is not YAML: %v", err)
			}
			// Tilt puts every object without a namespace into the given one.
			var out bytes.Buffer
			for _, d := range docs {
				if meta, ok := d["metadata"].(map[string]any); ok && namespace != "" && str(d, "metadata", "namespace") == "" {
					meta["namespace"] = namespace
				}
				y, _ := yaml.Marshal(d)
				out.WriteString("---\n")
				out.Write(y)
			}
			return blob{out.String(), "helm(" + chart + ")"}, nil
		}),
		"k8s_yaml": fn("k8s_yaml", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var v starlark.Value
			var allowDuplicates bool
			if err := starlark.UnpackArgs(b.Name(), a, kw, "yaml", &v, "allow_duplicates?", &allowDuplicates); err != nil {
				return nil, err
			}
			if bl, ok := v.(blob); ok {
				return starlark.None, r.deploy(bl.text, bl.source)
			}
			paths, err := stringList(v)
			if err != nil {
				return nil, fmt.Errorf("k8s_yaml: %v", err)
			}
			for _, p := range paths {
				data, err := os.ReadFile(r.path(p, "k8s_yaml"))
				if err != nil {
					return nil, fmt.Errorf("k8s_yaml: %v", err)
				}
				if err := r.deploy(string(data), p); err != nil {
					return nil, err
				}
			}
			return starlark.None, nil
		}),
		"k8s_kind": fn("k8s_kind", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var k, apiVersion, podReadiness string
			var imageJSONPath, imageObject starlark.Value
			if err := starlark.UnpackArgs(b.Name(), a, kw, "kind", &k, "api_version?", &apiVersion,
				"image_json_path?", &imageJSONPath, "image_object_json_path?", &imageObject, "pod_readiness?", &podReadiness); err != nil {
				return nil, err
			}
			paths, err := stringList(imageJSONPath)
			if err != nil {
				return nil, fmt.Errorf("k8s_kind image_json_path: %v", err)
			}
			r.kinds = append(r.kinds, kind{k, apiVersion, strings.Join(paths, ",")})
			return starlark.None, nil
		}),
		"k8s_resource": fn("k8s_resource", func(_ *starlark.Thread, b *starlark.Builtin, a starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			var workload, newName, triggerMode, podReadiness, discovery string
			var portForwards, extraSelectors, resourceDeps, objects, links, labels starlark.Value
			var autoInit = true
			var trigger starlark.Value
			_ = triggerMode
			if err := starlark.UnpackArgs(b.Name(), a, kw, "workload?", &workload, "new_name?", &newName,
				"port_forwards?", &portForwards, "extra_pod_selectors?", &extraSelectors, "trigger_mode?", &trigger,
				"resource_deps?", &resourceDeps, "objects?", &objects, "auto_init?", &autoInit,
				"pod_readiness?", &podReadiness, "links?", &links, "labels?", &labels, "discovery_strategy?", &discovery); err != nil {
				return nil, err
			}
			pf, err := stringList(portForwards)
			if err != nil {
				return nil, fmt.Errorf("k8s_resource port_forwards: %v", err)
			}
			deps, err := stringList(resourceDeps)
			if err != nil {
				return nil, fmt.Errorf("k8s_resource resource_deps: %v", err)
			}
			r.resources = append(r.resources, resource{workload, pf, deps})
			return starlark.None, nil
		}),
	}
}

// evaluate runs the Tiltfile once with the given context, environment and `tilt up -- ARGS`.
func evaluate(repo, helm, context string, env map[string]string) (*recording, error) {
	r := &recording{repo: repo, context: context, env: env, paths: map[string]string{}, helm: helm}
	thread := &starlark.Thread{Name: "Tiltfile", Print: func(_ *starlark.Thread, msg string) { fmt.Println("[Tiltfile]", msg) }}
	src, err := os.ReadFile(filepath.Join(repo, "Tiltfile"))
	if err != nil {
		return nil, err
	}
	_, err = starlark.ExecFileOptions(fileOptions, thread, "Tiltfile", src, r.builtins())
	if err != nil {
		var evalErr *starlark.EvalError
		if errors.As(err, &evalErr) {
			return r, errors.New(evalErr.Backtrace())
		}
		return r, err
	}
	// Tilt refuses a context that is neither allowed nor one it knows to be local.
	allowed := tiltLocalContext.MatchString(context)
	for _, c := range r.allowed {
		allowed = allowed || c == context
	}
	if !allowed {
		return r, fmt.Errorf("Tilt would refuse context %q: not in allow_k8s_contexts %v", context, r.allowed)
	}
	return r, nil
}

var workloadKinds = map[string]bool{"Deployment": true, "StatefulSet": true, "DaemonSet": true, "Job": true, "CronJob": true, "Pod": true, "ReplicaSet": true}

// check looks at what one evaluation recorded.
func (r *recording) check(label string) {
	for p, by := range r.paths {
		if _, err := os.Stat(r.path(p, by)); err != nil {
			r.problem("%s: %s names %s, which does not exist", label, by, p)
		}
	}
	if len(r.builds) == 0 {
		r.problem("%s: no image is built", label)
	}
	// Tilt refuses the same object twice.
	seen := map[string]string{}
	for _, o := range r.objects {
		id := objectID(o)
		if prev, dup := seen[id]; dup {
			r.problem("%s: %s deployed twice (%s and %s)", label, id, prev, o["__source"])
		}
		seen[id] = fmt.Sprint(o["__source"])
	}
	// Every image built is used by an object, where Tilt looks for it.
	imageFields := map[string][]string{} // kind -> jsonpath-ish
	for _, k := range r.kinds {
		imageFields[k.kind] = append(imageFields[k.kind], k.imageJSONPath)
	}
	workloads := map[string]bool{}
	var images []string
	for _, o := range r.objects {
		k := str(o, "kind")
		name := str(o, "metadata", "name")
		if workloadKinds[k] {
			workloads[name] = true
			images = append(images, containerImages(o)...)
		}
		for _, p := range imageFields[k] {
			workloads[name] = true
			if p == "{.spec.image}" {
				images = append(images, str(o, "spec", "image"))
			} else {
				r.problem("%s: k8s_kind(%s) image_json_path %q is not understood by this checker: teach it", label, k, p)
			}
		}
	}
	for _, b := range r.builds {
		used := false
		for _, img := range images {
			used = used || img == b.ref || strings.HasPrefix(img, b.ref+":") || strings.HasPrefix(img, b.ref+"@")
		}
		if !used {
			r.problem("%s: %s(%q) builds an image no deployed object uses (images: %v)", label, b.builtin, b.ref, images)
		}
		if b.builtin == "custom_build" && strings.HasPrefix(b.command, "make ") {
			// The target must exist (looked up, not run: `make -n` would run $(MAKE) lines).
			target := strings.Fields(b.command)[1]
			makefile, _ := os.ReadFile(filepath.Join(r.repo, "Makefile"))
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(target) + `\s*:`).Match(makefile) {
				r.problem("%s: custom_build(%q) runs `%s`, but the Makefile has no target %q", label, b.ref, b.command, target)
			}
		}
	}
	names := map[string]bool{}
	for _, res := range r.resources {
		names[res.workload] = true
	}
	for _, res := range r.resources {
		if !workloads[res.workload] {
			r.problem("%s: k8s_resource(%q) names no workload (workloads: %v)", label, res.workload, keys(workloads))
		}
		for _, pf := range res.portForwards {
			if !regexp.MustCompile(`^([0-9]{1,5}:)?[0-9]{1,5}$`).MatchString(pf) {
				r.problem("%s: k8s_resource(%q) port forward %q is not LOCAL:REMOTE", label, res.workload, pf)
			}
		}
		for _, d := range res.resourceDeps {
			if !workloads[d] && !names[d] {
				r.problem("%s: k8s_resource(%q) depends on unknown resource %q", label, res.workload, d)
			}
		}
	}
}

func keys(m map[string]bool) []string {
	out := []string{}
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func containerImages(o map[string]any) []string {
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if cs, ok := v["containers"].([]any); ok {
				for _, c := range cs {
					if m, ok := c.(map[string]any); ok {
						if img, ok := m["image"].(string); ok {
							out = append(out, img)
						}
					}
				}
			}
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(o["spec"])
	return out
}

// currentContext reads current-context from a kubeconfig (the one line e2e/env/up.sh writes).
func currentContext(kubeconfig string) string {
	data, err := os.ReadFile(kubeconfig)
	if err != nil {
		return ""
	}
	m := regexp.MustCompile(`(?m)^current-context:\s*"?([^"\s]+)"?\s*$`).FindSubmatch(data)
	if m == nil {
		return ""
	}
	return string(m[1])
}

func checkTiltfile(args []string) int {
	fs := flag.NewFlagSet("tiltcheck", flag.ExitOnError)
	repo := fs.String("repo", ".", "repository root (where the Tiltfile is)")
	helm := fs.String("helm", "helm", "helm binary")
	context := fs.String("context", "", "the local kube context (default: current-context of $KUBECONFIG, else \"local\")")
	_ = fs.Parse(args)
	if *context == "" {
		*context = currentContext(os.Getenv("KUBECONFIG"))
	}
	if *context == "" {
		*context = "local"
	}
	var problems []string
	for _, run := range []struct {
		label string
		env   map[string]string
	}{
		{"make images", map[string]string{}},
		{"MQTT_KAFKA_USE_DOCKER=1", map[string]string{"MQTT_KAFKA_USE_DOCKER": "1"}},
		{"Kafka override", map[string]string{"MQTT_KAFKA_TILT_KAFKA_BOOTSTRAP": "kafka.kafka.svc:9092"}},
	} {
		label := fmt.Sprintf("context %s, %s", *context, run.label)
		r, err := evaluate(*repo, *helm, *context, run.env)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: the Tiltfile fails: %v", label, err))
			continue
		}
		r.check(label)
		problems = append(problems, r.problems...)
		fmt.Printf("[tilt] %s: %d builds (%s), %d objects, %d resources; %s\n", label, len(r.builds), r.builds[0].builtin, len(r.objects), len(r.resources), strings.Join(r.helmRuns, "; "))
	}
	// A context that is not local must be refused.
	if _, err := evaluate(*repo, *helm, "prod-cluster", map[string]string{}); err == nil {
		problems = append(problems, "context prod-cluster: the Tiltfile was accepted; it must refuse contexts that are not local")
	} else {
		fmt.Printf("[tilt] context prod-cluster refused: %s\n", firstLine(err.Error()))
	}
	for _, p := range problems {
		fmt.Fprintln(os.Stderr, "[tilt] FAIL:", p)
	}
	if len(problems) > 0 {
		return 1
	}
	fmt.Println("[tilt] ok: the Tiltfile evaluates, names only files that exist, renders its chart, and refuses non-local contexts")
	return 0
}

func firstLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// checkManifests parses rendered manifests from stdin: every document has apiVersion, kind,
// metadata.name; a ServiceMonitor's endpoints name a port of a Service it selects; a
// PodMonitor's endpoints name the proxy's admin port.
func checkManifests(args []string) int {
	fs := flag.NewFlagSet("manifests", flag.ExitOnError)
	adminPort := fs.String("admin-port", "admin", "name of the proxy pods' metrics port")
	_ = fs.Parse(args)
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "[manifests] FAIL:", err)
		return 1
	}
	docs, err := parseDocs(string(data))
	if err != nil {
		fmt.Fprintln(os.Stderr, "[manifests] FAIL: not YAML:", err)
		return 1
	}
	var problems []string
	kinds := map[string]int{}
	for _, d := range docs {
		if str(d, "apiVersion") == "" || str(d, "kind") == "" || str(d, "metadata", "name") == "" {
			problems = append(problems, fmt.Sprintf("an object without apiVersion, kind or metadata.name: %v", d))
			continue
		}
		kinds[str(d, "kind")]++
	}
	labelsMatch := func(sel, labels map[string]any) bool {
		for k, v := range sel {
			if labels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	asMap := func(v any) map[string]any { m, _ := v.(map[string]any); return m }
	asList := func(v any) []any { l, _ := v.([]any); return l }
	for _, d := range docs {
		spec := asMap(d["spec"])
		switch str(d, "kind") {
		case "ServiceMonitor":
			sel := asMap(asMap(spec["selector"])["matchLabels"])
			ports := map[string]bool{}
			for _, s := range docs {
				if str(s, "kind") == "Service" && labelsMatch(sel, asMap(asMap(s["metadata"])["labels"])) {
					for _, p := range asList(asMap(s["spec"])["ports"]) {
						ports[str(asMap(p), "name")] = true
					}
				}
			}
			if len(ports) == 0 {
				problems = append(problems, fmt.Sprintf("ServiceMonitor %s selects no Service of the chart (selector %v)", str(d, "metadata", "name"), sel))
			}
			for _, e := range asList(spec["endpoints"]) {
				if p := str(asMap(e), "port"); !ports[p] {
					problems = append(problems, fmt.Sprintf("ServiceMonitor %s: endpoint port %q is not a port of the Service it selects (%v)", str(d, "metadata", "name"), p, keys(ports)))
				}
			}
		case "PodMonitor":
			for _, e := range asList(spec["podMetricsEndpoints"]) {
				if p := str(asMap(e), "port"); p != *adminPort {
					problems = append(problems, fmt.Sprintf("PodMonitor %s: port %q is not the proxy's metrics port %q", str(d, "metadata", "name"), p, *adminPort))
				}
			}
			if len(asMap(asMap(spec["selector"])["matchLabels"])) == 0 {
				problems = append(problems, fmt.Sprintf("PodMonitor %s has no selector", str(d, "metadata", "name")))
			}
		}
	}
	for _, p := range problems {
		fmt.Fprintln(os.Stderr, "[manifests] FAIL:", p)
	}
	if len(problems) > 0 {
		return 1
	}
	fmt.Printf("[manifests] ok: %d objects parse (%v)\n", len(docs), kinds)
	return 0
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "manifests" {
		os.Exit(checkManifests(os.Args[2:]))
	}
	os.Exit(checkTiltfile(os.Args[1:]))
}
